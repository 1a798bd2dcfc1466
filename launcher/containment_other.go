//go:build !linux

package launcher

import (
	"time"

	"github.com/mpspawn/mpspawn/launcher/internal/contain"
)

// containment needs Linux (cgroups, pidfds, a subreaper); Start refuses
// to run ranks before it is used.
type containment struct {
	kind Containment
	note string
}

func newContainment(Containment, []*rankProc, *contain.Guard) (*containment, error) {
	return nil, ErrUnsupported
}
func (*containment) kill()                          {}
func (*containment) end([]*rankProc, time.Duration) {}
func (*containment) close(time.Duration)            {}
func (*containment) usage(*rankProc)                {}

// MkdirTemp is os.MkdirTemp: there is no guard off Linux.
func MkdirTemp(dir, pattern string) (string, error) { return contain.MkdirTemp(dir, pattern) }

// CgroupError returns ErrUnsupported: cgroups are a Linux feature.
func CgroupError() error { return ErrUnsupported }
