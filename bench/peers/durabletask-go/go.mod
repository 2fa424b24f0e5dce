// Pins the durabletask-go sidecar that `./bench.sh --vs durabletask-go` builds from the Go
// module proxy (its main package: the stock sidecar on SQLite).
module outrigger-bench-peer

go 1.22

require github.com/microsoft/durabletask-go v0.6.0
