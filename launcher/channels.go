package launcher

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/ipc"
)

// channelDrain bounds the wait for a control channel's reader once its
// rank has exited: a process the rank passed its descriptor to may hold
// the channel open.
const channelDrain = time.Second

// Channels are the control channels of one Group's ranks to a broker: the
// one server of `mpspawn --ipc`, the Go API's ranks and its Pool workers.
// Each rank inherits its end as ipc.ControlFD, named in its environment by
// ipc.ControlFDEnv; the launcher serves the other end with
// ipc.Broker.Serve. A rank whose channel breaks the protocol (a frame
// written by another process, a malformed frame, a frame nobody expects)
// stops the Group, and the error says which pid lied.
//
// The lifecycle is AddChannels before Start, Serve after it (or Close if
// it failed), and Close after the Group's Wait.
type Channels struct {
	broker   *ipc.Broker
	ranks    map[int]int // Spec.Rank → index
	conns    []*ipc.Conn
	children []*os.File // the ranks' ends, closed once they are started
	done     []chan struct{}
	errs     []error
	served   sync.WaitGroup
}

// AddChannels gives every spec a control channel to broker: its end
// becomes the rank's first extra file, and its environment names it.
// Ranks are attached to the broker by Spec.Rank.
//
// A broker that cannot serve ranks (ipc.Broker.Err: a malformed limit in
// the environment) is an error here, before any rank starts.
func AddChannels(broker *ipc.Broker, specs []Spec) (*Channels, error) {
	if err := broker.Err(); err != nil {
		return nil, fmt.Errorf("launcher: control channel: %w", err)
	}
	c := &Channels{broker: broker, ranks: map[int]int{}, errs: make([]error, len(specs))}
	for i := range specs {
		c.ranks[specs[i].Rank] = i
		parent, child, err := ipc.Pair()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("launcher: control channel: %w", err)
		}
		c.conns = append(c.conns, parent)
		c.children = append(c.children, child)
		c.done = append(c.done, make(chan struct{}))
		specs[i].ExtraFiles = append([]*os.File{child}, specs[i].ExtraFiles...)
		specs[i].Env = append(specs[i].Env, ipc.ControlFDVar())
	}
	return c, nil
}

// Conn returns the launcher's end of the i-th spec's channel, for frames
// the launcher sends (arguments, tasks).
func (c *Channels) Conn(i int) *ipc.Conn { return c.conns[i] }

// Serve serves the channels of g's ranks, which were started from the
// specs given to AddChannels. Frames other than broker
// requests go to deliver (nil: none are expected), with the index of the
// spec; an error from deliver, like any protocol error, stops g.
func (c *Channels) Serve(g *Group, deliver func(i int, f ipc.Frame) error) {
	closeAll(c.children)
	c.children = nil
	for _, rp := range g.ranks {
		i := c.ranks[rp.spec.Rank]
		conn, pid := c.conns[i], rp.proc.pid()
		var d func(ipc.Frame) error
		if deliver != nil {
			d = func(f ipc.Frame) error { return deliver(i, f) }
		}
		c.served.Go(func() {
			defer close(c.done[i])
			if err := c.broker.Serve(rp.spec.Rank, conn, pid, d); err != nil {
				c.errs[i] = err
				g.Stop(err)
			}
		})
	}
}

// Done returns a channel closed when the i-th channel's serving has ended.
func (c *Channels) Done(i int) <-chan struct{} { return c.done[i] }

// Err returns why the i-th channel's serving ended with an error, once
// Done(i) is closed; nil when the rank simply closed it.
func (c *Channels) Err(i int) error { return c.errs[i] }

// Close ends the channels: it waits, bounded, for their serving to end
// (call it once the ranks have exited), then closes them. It is safe to
// call after a failed Start, and more than once.
func (c *Channels) Close() {
	closeAll(c.children)
	c.children = nil
	deadline := time.Now().Add(channelDrain)
	for _, conn := range c.conns {
		_ = conn.SetReadDeadline(deadline)
	}
	c.served.Wait()
	for _, conn := range c.conns {
		conn.Close()
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
