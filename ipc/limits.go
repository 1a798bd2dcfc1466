package ipc

import (
	"fmt"
	"math"
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
	// TotalFDs is how many descriptors the broker keeps for all ranks
	// together (the launcher's own publishes count, but are never refused):
	// the launcher's budget. By default it is the launcher's RLIMIT_NOFILE
	// less a reserve for its own work (pipes, logs, sockets, descriptors in
	// flight), so that ranks each within FDs cannot together run the
	// launcher out of descriptors; it is never more than that.
	// MPSPAWN_IPC_MAX_TOTAL_FDS.
	TotalFDs int
	// TotalQueuedBytes is how many bytes of all ranks' puts may wait in
	// queues together; MPSPAWN_IPC_MAX_TOTAL_QUEUED_BYTES.
	TotalQueuedBytes int
	// FrameTimeout bounds how long a frame may take to arrive once its
	// first byte has: a rank that announces a frame and leaves it
	// unfinished is cut off with ErrProtocol; MPSPAWN_IPC_FRAME_TIMEOUT (a
	// Go duration, such as 1m).
	FrameTimeout time.Duration
}

// DefaultLimits returns the limits a broker has unless told otherwise.
func DefaultLimits() Limits {
	return Limits{Handles: 1 << 16, FDs: 4096, Pending: peerQueue, Queues: 1 << 14, QueuedBytes: 1 << 30,
		TotalFDs: fdBudget(nofile()), TotalQueuedBytes: min(4<<30, math.MaxInt), FrameTimeout: 30 * time.Second}
}

// fdReserveMin is the least fdBudget keeps back for the launcher's own
// work; it keeps an eighth of the limit when that is more.
const fdReserveMin = 256

// fdBudget is the default TotalFDs under an RLIMIT_NOFILE of n (0: not
// known): n less the launcher's reserve, and at least half of n.
func fdBudget(n uint64) int {
	if n == 0 {
		n = 1 << 20
	}
	reserve := max(fdReserveMin, n/8)
	if n < 2*reserve {
		return int(n / 2)
	}
	return int(min(n-reserve, math.MaxInt32))
}

// The environment variables LimitsFromEnv reads.
const (
	EnvMaxHandles     = "MPSPAWN_IPC_MAX_HANDLES"
	EnvMaxFDs         = "MPSPAWN_IPC_MAX_FDS"
	EnvMaxPending     = "MPSPAWN_IPC_MAX_PENDING"
	EnvMaxQueues      = "MPSPAWN_IPC_MAX_QUEUES"
	EnvMaxQueuedBytes = "MPSPAWN_IPC_MAX_QUEUED_BYTES"
	EnvFrameTimeout   = "MPSPAWN_IPC_FRAME_TIMEOUT"

	EnvMaxTotalFDs         = "MPSPAWN_IPC_MAX_TOTAL_FDS"
	EnvMaxTotalQueuedBytes = "MPSPAWN_IPC_MAX_TOTAL_QUEUED_BYTES"
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
	}{{EnvMaxHandles, &l.Handles}, {EnvMaxFDs, &l.FDs}, {EnvMaxPending, &l.Pending}, {EnvMaxQueues, &l.Queues}, {EnvMaxQueuedBytes, &l.QueuedBytes},
		{EnvMaxTotalFDs, &l.TotalFDs}, {EnvMaxTotalQueuedBytes, &l.TotalQueuedBytes}} {
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
	l.TotalFDs = min(l.TotalFDs, fdBudget(nofile()))
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
// environment (LimitsFromEnv). A limit of 0 or less takes its default;
// TotalFDs is never more than its default.
func WithLimits(l Limits) BrokerOption {
	return func(b *Broker) {
		d := DefaultLimits()
		for _, v := range []struct{ dst, def *int }{{&l.Handles, &d.Handles}, {&l.FDs, &d.FDs}, {&l.Pending, &d.Pending}, {&l.Queues, &d.Queues}, {&l.QueuedBytes, &d.QueuedBytes},
			{&l.TotalFDs, &d.TotalFDs}, {&l.TotalQueuedBytes, &d.TotalQueuedBytes}} {
			if *v.dst <= 0 {
				*v.dst = *v.def
			}
		}
		l.TotalFDs = min(l.TotalFDs, d.TotalFDs)
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

// totalErr is the error of a request of rank past a launcher-wide limit.
func totalErr(rank int, what string, limit int, env string) error {
	return fmt.Errorf("%w: rank %d: %s (launcher-wide limit %d, for all ranks together; raise it with ipc.WithLimits or %s)", ErrLimit, rank, what, limit, env)
}

// fdBudgetErr is the error of a publish by rank past the launcher's
// descriptor budget (Limits.TotalFDs), of which all ranks keep kept.
func fdBudgetErr(rank, kept, limit int) error {
	from := ""
	if n := nofile(); n != 0 && limit == fdBudget(n) {
		from = fmt.Sprintf(": RLIMIT_NOFILE %d less a reserve for the launcher's own work", n)
	}
	return fmt.Errorf("%w: rank %d: the launcher's descriptor budget is spent: all ranks' buffers keep %d of its descriptors "+
		"(launcher-wide limit %d%s; raise RLIMIT_NOFILE, or lower %s so that the ranks share the budget)", ErrLimit, rank, kept, limit, from, EnvMaxFDs)
}

// newBrokerLimits is the limits of a new broker: the environment's.
func newBrokerLimits() (Limits, error) {
	return LimitsFromEnv(os.Getenv)
}
