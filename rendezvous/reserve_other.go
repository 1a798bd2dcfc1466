//go:build !linux

package rendezvous

import (
	"net"
	"os"
)

// ReservePort asks the kernel for a free port by listening on port 0, then
// closes the listener and holds nothing, as torchrun does. This is racy:
// another process can take the port before rank 0 binds it. Only Linux has
// the race-free reservation (see reserve_linux.go).
func ReservePort() (port int, hold *os.File, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, err
	}
	port = l.Addr().(*net.TCPAddr).Port
	return port, nil, l.Close()
}
