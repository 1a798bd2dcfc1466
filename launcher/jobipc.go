package launcher

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/ipc"
)

// jobControl gives a Job's ranks control channels to a broker (Job.IPC):
// each rank inherits its end as fd 3 (MPSPAWN_CONTROL_FD) and may share
// buffers and use queues through it (examples/python/mpspawn_ipc.py).
type jobControl struct {
	broker   *ipc.Broker
	conns    []*ipc.Conn
	children []*os.File
	readers  sync.WaitGroup
}

// addControl gives every spec a control channel.
func addControl(specs []Spec) (*jobControl, error) {
	jc := &jobControl{broker: ipc.NewBroker()}
	for i := range specs {
		parent, child, err := ipc.Pair()
		if err != nil {
			jc.close()
			return nil, fmt.Errorf("launcher: control channel: %w", err)
		}
		jc.conns = append(jc.conns, parent)
		jc.children = append(jc.children, child)
		specs[i].ExtraFiles = append([]*os.File{child}, specs[i].ExtraFiles...)
		specs[i].Env = append(specs[i].Env, "MPSPAWN_CONTROL_FD="+strconv.Itoa(controlFD))
	}
	return jc, nil
}

// serve attaches the started ranks and serves their requests until their
// channels close.
func (jc *jobControl) serve(g *Group) {
	closeAll(jc.children)
	jc.children = nil
	pids := g.Pids()
	for i, c := range jc.conns {
		_ = jc.broker.Attach(i, c) // the job's own broker: ranks are distinct
		jc.readers.Go(func() {
			defer jc.broker.Detach(i, c)
			for {
				f, err := c.ReadFrame()
				if err != nil {
					return
				}
				if err := checkPeer(c, pids[i]); err != nil || f.Type != ipc.FrameRequest {
					closeAll(f.Files) // only broker requests travel here
					continue
				}
				jc.broker.Handle(i, f)
			}
		})
	}
}

// finish waits (bounded) for the readers after the ranks exited, closes
// the channels and the broker, and returns the leaked handles.
func (jc *jobControl) finish() []string {
	deadline := time.Now().Add(time.Second)
	for _, c := range jc.conns {
		_ = c.SetReadDeadline(deadline)
	}
	jc.readers.Wait()
	jc.close()
	return jc.broker.Close()
}

func (jc *jobControl) close() {
	closeAll(jc.children)
	closeConns(jc.conns)
}
