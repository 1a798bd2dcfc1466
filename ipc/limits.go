package ipc

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// Limits bound what one rank may make the broker keep for it, so that a
// careless or hostile rank cannot starve the others or grow the launcher
// without bound. A request past a limit is refused with an error wrapping
// ErrLimit that names the limit; the rank's channel stays usable, and the
// other ranks carry on. Everything counted is freed when the rank exits.
// The defaults (DefaultLimits) are far above what training jobs use; raise
// them with WithLimits, or for `mpspawn --ipc` with the environment
// variables named below, read by NewBroker.
type Limits struct {
	// Handles is how many distinct handles a rank may hold at once
	// (published, received from a queue, or opened from the launcher);
	// MPSPAWN_IPC_MAX_HANDLES.
	Handles int
	// FDs is how many descriptors the broker keeps for the host buffers
	// and descriptors a rank published and that are not yet freed;
	// MPSPAWN_IPC_MAX_FDS.
	FDs int
	// Pending is how many of a rank's requests may wait at once: Gets,
	// Puts waiting for room, Joins, waits for holders;
	// MPSPAWN_IPC_MAX_PENDING.
	Pending int
	// Queues is how many queues a rank may have created (named first)
	// that still exist. A queue exists while it holds values, has
	// waiting requests, or has values got but not marked done (TaskDone);
	// MPSPAWN_IPC_MAX_QUEUES.
	Queues int
	// QueuedBytes is how many bytes of a rank's puts may wait in queues
	// (the broker keeps each put request whole while any message of it
	// waits: a batch counts whole until its last message is got);
	// MPSPAWN_IPC_MAX_QUEUED_BYTES.
	QueuedBytes int
	// FrameTimeout bounds how long a frame may take to arrive once its
	// first byte has: a rank that announces a frame and leaves it
	// unfinished is cut off with ErrProtocol; MPSPAWN_IPC_FRAME_TIMEOUT (a
	// Go duration, such as 1m).
	FrameTimeout time.Duration
}

// DefaultLimits returns the limits a broker has unless told otherwise.
func DefaultLimits() Limits {
	return Limits{Handles: 1 << 16, FDs: 4096, Pending: peerQueue, Queues: 1 << 14, QueuedBytes: 1 << 30, FrameTimeout: 30 * time.Second}
}

// The environment variables LimitsFromEnv reads.
const (
	EnvMaxHandles     = "MPSPAWN_IPC_MAX_HANDLES"
	EnvMaxFDs         = "MPSPAWN_IPC_MAX_FDS"
	EnvMaxPending     = "MPSPAWN_IPC_MAX_PENDING"
	EnvMaxQueues      = "MPSPAWN_IPC_MAX_QUEUES"
	EnvMaxQueuedBytes = "MPSPAWN_IPC_MAX_QUEUED_BYTES"
	EnvFrameTimeout   = "MPSPAWN_IPC_FRAME_TIMEOUT"
)

// LimitsFromEnv returns DefaultLimits with each limit that getenv names
// (EnvMaxHandles, ...) in its place. A value that is not a positive
// integer (or, for the frame timeout, a positive duration) is an error
// naming it.
func LimitsFromEnv(getenv func(string) string) (Limits, error) {
	l := DefaultLimits()
	for _, v := range []struct {
		name string
		dst  *int
	}{{EnvMaxHandles, &l.Handles}, {EnvMaxFDs, &l.FDs}, {EnvMaxPending, &l.Pending}, {EnvMaxQueues, &l.Queues}, {EnvMaxQueuedBytes, &l.QueuedBytes}} {
		s := getenv(v.name)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return Limits{}, fmt.Errorf("ipc: %s=%q: want a positive integer", v.name, s)
		}
		*v.dst = n
	}
	if s := getenv(EnvFrameTimeout); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return Limits{}, fmt.Errorf("ipc: %s=%q: want a positive duration, such as 1m", EnvFrameTimeout, s)
		}
		l.FrameTimeout = d
	}
	return l, nil
}

// BrokerOption configures a Broker made by NewBroker.
type BrokerOption func(*Broker)

// WithLimits gives the broker limits l in place of those of the
// environment (LimitsFromEnv). A limit of 0 or less takes its default.
func WithLimits(l Limits) BrokerOption {
	return func(b *Broker) {
		d := DefaultLimits()
		for _, v := range []struct{ dst, def *int }{{&l.Handles, &d.Handles}, {&l.FDs, &d.FDs}, {&l.Pending, &d.Pending}, {&l.Queues, &d.Queues}, {&l.QueuedBytes, &d.QueuedBytes}} {
			if *v.dst <= 0 {
				*v.dst = *v.def
			}
		}
		if l.FrameTimeout <= 0 {
			l.FrameTimeout = d.FrameTimeout
		}
		b.limits, b.limitsErr = l, nil
	}
}

// limitErr is the error of a request past one of rank's limits.
func limitErr(rank int, what string, limit int, env string) error {
	return fmt.Errorf("%w: rank %d: %s (limit %d; raise it with ipc.WithLimits or %s)", ErrLimit, rank, what, limit, env)
}

// newBrokerLimits is the limits of a new broker: the environment's.
func newBrokerLimits() (Limits, error) {
	return LimitsFromEnv(os.Getenv)
}
