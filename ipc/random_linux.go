package ipc

import (
	"os"

	"golang.org/x/sys/unix"
)

// randomBytes fills b from the kernel's random source, as crypto/rand does
// on Linux, with getrandom(2) itself: crypto/rand would bring the standard
// library's whole cryptographic module, and its package initialisation,
// into every Go API rank.
func randomBytes(b []byte) error {
	for len(b) > 0 {
		n, err := unix.Getrandom(b, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("getrandom", err)
		}
		b = b[n:]
	}
	return nil
}
