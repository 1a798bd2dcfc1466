//go:build !linux

package rendezvous

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
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

// CheckPort reports whether rank 0 could listen on port on this host: it
// binds and listens on the port on every address, as torch's TCPStore does
// (SO_REUSEADDR), and closes the socket at once. A port another socket
// listens on gives an error wrapping ErrPortInUse. The port may still be
// taken between CheckPort and rank 0's listen: this finds the common case
// (a previous job still running) before any rank starts, not every race.
func CheckPort(port int) error {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("rendezvous: port %d: %w", port, ErrPortInUse)
	}
	if err != nil {
		return fmt.Errorf("rendezvous: check port %d: %w", port, err)
	}
	return l.Close()
}
