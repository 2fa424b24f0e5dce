//go:build tools

// Keeps the durabletask-go module required, so `go build github.com/microsoft/durabletask-go`
// resolves it from go.mod and go.sum.
package peer

import _ "github.com/microsoft/durabletask-go"
