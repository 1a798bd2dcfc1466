package launcher

import (
	"os"
	"syscall"
)

// openErrorFile opens a rank's error file without following a symbolic
// link and without blocking (on a FIFO, say).
func openErrorFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
}
