# Targets match the README.
.PHONY: test demo serve bench fmt

test:   ## every check CI runs
	./scripts/test.sh

demo:   ## build, start tidings serve, show a message arriving over WebSocket
	./scripts/demo.sh

serve:
	cargo run --release -p tidings -- serve

bench:  ## load run against a server on 127.0.0.1:8080
	cargo run --release -p tidings-benches --bin tidings-loadgen -- --admin-token "$$TIDINGS_ADMIN_TOKEN"

fmt:
	cargo fmt --all
