module tidings.local/registry

go 1.22

require github.com/twmb/franz-go/pkg/sr v1.8.0
