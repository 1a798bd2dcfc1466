package launcher

import (
	"context"
	"fmt"
	"runtime"
)

// A StartMethod makes rank processes. There are two, as in
// torch.multiprocessing: spawn, the default, forks and execs each rank
// from the launcher; forkserver forks Python ranks from one server that
// imported their heavy modules once (see Forkserver). Both are made by
// NewStartMethod, the one place a start method is started, and closed by
// their owner once every Group using them has ended.
type StartMethod interface {
	// Name is "spawn" or "forkserver", as MPSPAWN_START_METHOD tells ranks.
	Name() string
	// Ready waits until ranks can be started: a forkserver's preload.
	Ready(ctx context.Context) error
	// Close releases what the method holds (a forkserver's process).
	Close() error

	// starter returns what starts one Group's n ranks; it is closed once
	// they have all been reaped.
	starter(n int) rankStarter
}

// rankStarter starts the ranks of one Group: start starts rank i of the
// Group, rp, and sets its process.
type rankStarter interface {
	start(i int, rp *rankProc) error
	close()
}

// Start method names.
const (
	MethodSpawn      = "spawn"
	MethodForkserver = "forkserver"
)

// NewStartMethod starts the start method name: MethodSpawn, or
// MethodForkserver, whose server is started with cfg (its preload goes on
// in the background; Start waits for it). Close it after the last Group
// using it has ended.
func NewStartMethod(name string, cfg ForkserverConfig) (StartMethod, error) {
	switch name {
	case MethodSpawn:
		return spawnMethod{}, nil
	case MethodForkserver:
		fs, err := newForkserver(cfg)
		if err != nil {
			return nil, err // not a nil *Forkserver in a non-nil interface
		}
		return fs, nil
	}
	return nil, fmt.Errorf("launcher: start method %q: want %s or %s", name, MethodSpawn, MethodForkserver)
}

// spawnMethod is the spawn start method: the launcher forks each rank from
// a locked OS thread and execs its program.
type spawnMethod struct{}

var (
	_ StartMethod = spawnMethod{}
	_ StartMethod = (*Forkserver)(nil)
)

func (spawnMethod) Name() string                { return MethodSpawn }
func (spawnMethod) Ready(context.Context) error { return nil }
func (spawnMethod) Close() error                { return nil }

func (spawnMethod) starter(n int) rankStarter {
	return newStarter(min(n, runtime.NumCPU()))
}

// Name returns MethodForkserver.
func (fs *Forkserver) Name() string { return MethodForkserver }

// starter forks one Group's ranks from the server; the server outlives
// the Group.
func (fs *Forkserver) starter(int) rankStarter { return forkStarter{fs} }

type forkStarter struct{ fs *Forkserver }

func (f forkStarter) start(_ int, rp *rankProc) error { return f.fs.start(rp) }
func (forkStarter) close()                            {}
