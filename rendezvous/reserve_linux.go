package rendezvous

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ReservePort picks a free TCP port and holds it until hold is closed.
//
// The socket binds port 0 without SO_REUSEADDR, so the kernel only picks a
// port that no socket on any address holds. Then it sets SO_REUSEADDR and
// stays bound, never listening. Linux's bind rules then give:
//
//   - a bind with SO_REUSEADDR to that port succeeds while we hold it, and so
//     does listen (two SO_REUSEADDR sockets only conflict when one listens):
//     rank 0 and torch's TCPStore (SO_REUSEADDR on 0.0.0.0, [::] or
//     127.0.0.1) work unchanged;
//   - a bind to port 0 never gets it, with or without SO_REUSEADDR (the
//     kernel's port search does not relax the rule), nor does connect's
//     automatic bind (it skips ports that bind created).
//
// Which address we hold matters, because the kernel only checks sockets
// whose addresses overlap. Measured on Linux 6.18: holding 127.0.0.1 still
// let a port-0 bind to 127.0.0.2 or [::1] get the port; holding 0.0.0.0
// still let [::1] get it; holding [::] dual-stack blocked every address of
// both families. So we hold [::] with IPV6_V6ONLY off, and 0.0.0.0 where the
// kernel has no IPv6.
//
// The socket is close-on-exec, so ranks do not inherit it.
func ReservePort() (port int, hold *os.File, err error) {
	fd, port, err := bindPortZero(unix.AF_INET6)
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL) {
		fd, port, err = bindPortZero(unix.AF_INET)
	}
	if err != nil {
		return 0, nil, err
	}
	return port, os.NewFile(uintptr(fd), fmt.Sprintf("rendezvous port %d", port)), nil
}

// bindPortZero binds a new close-on-exec TCP socket of the given family to
// the wildcard address, port 0, then sets SO_REUSEADDR on it.
func bindPortZero(family int) (fd, port int, err error) {
	s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	if port, err = bindAndReuse(s, family); err != nil {
		unix.Close(s)
		return -1, 0, err
	}
	return s, port, nil
}

func bindAndReuse(s, family int) (port int, err error) {
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{}
		if err := unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return 0, fmt.Errorf("setsockopt IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.Bind(s, sa); err != nil {
		return 0, fmt.Errorf("bind: %w", err)
	}
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return 0, fmt.Errorf("setsockopt SO_REUSEADDR: %w", err)
	}
	name, err := unix.Getsockname(s)
	if err != nil {
		return 0, fmt.Errorf("getsockname: %w", err)
	}
	switch a := name.(type) {
	case *unix.SockaddrInet6:
		return a.Port, nil
	case *unix.SockaddrInet4:
		return a.Port, nil
	}
	return 0, fmt.Errorf("getsockname: unexpected address %T", name)
}

// CheckPort reports whether rank 0 could listen on port on this host: it
// binds and listens on the port on every address, as torch's TCPStore does
// (SO_REUSEADDR), and closes the socket at once. A port another socket
// listens on gives an error wrapping ErrPortInUse. The port may still be
// taken between CheckPort and rank 0's listen: this finds the common case
// (a previous job still running) before any rank starts, not every race.
func CheckPort(port int) error {
	err := listenOnce(unix.AF_INET6, port)
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL) {
		err = listenOnce(unix.AF_INET, port)
	}
	if errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("rendezvous: port %d: %w", port, ErrPortInUse)
	}
	if err != nil {
		return fmt.Errorf("rendezvous: check port %d: %w", port, err)
	}
	return nil
}

// listenOnce listens on port on the family's wildcard address (both
// families for AF_INET6) with SO_REUSEADDR, and closes the socket.
func listenOnce(family, port int) error {
	s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: port}
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Port: port}
		if err := unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
	}
	if err := unix.Bind(s, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	return os.NewSyscallError("listen", unix.Listen(s, 1))
}
