package launcher

import (
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

var cloexecOnce sync.Once

// closeInherited marks every descriptor above stderr close-on-exec, once
// per process, as Python's subprocess does (close_fds): descriptors the
// launcher inherited from its own parent must not leak into ranks or the
// guard, where they would keep pipes open. Descriptors meant for a rank
// travel in Spec.ExtraFiles, which are duplicated into place regardless.
func closeInherited() {
	cloexecOnce.Do(func() {
		d, err := os.Open("/proc/self/fd")
		if err != nil {
			return
		}
		names, _ := d.Readdirnames(-1)
		d.Close()
		for _, n := range names {
			if fd, err := strconv.Atoi(n); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	})
}
