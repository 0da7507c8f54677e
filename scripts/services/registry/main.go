// A Confluent-compatible schema registry for tests: franz-go's in-memory srfake served on a
// loopback port. It keeps nothing on restart and does not enforce compatibility rules; it is
// here to exercise tidings' registry client over real HTTP, not to run in production.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/twmb/franz-go/pkg/sr/srfake"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(l.Addr().String())
	reg := srfake.New()
	if err := http.Serve(l, reg.Handler()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
