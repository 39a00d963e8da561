module github.com/flockhq/flock/example/activation

go 1.26.0

replace github.com/flockhq/flock => ../..

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/flockhq/flock v0.0.0-00010101000000-000000000000
	github.com/stretchr/testify v1.12.1
)

require (
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/sys v0.35.0 // indirect
)
