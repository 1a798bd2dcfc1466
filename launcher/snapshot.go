package launcher

import (
	"io"
	"sync"
	"syscall"
	"time"
)

// maxLastLine bounds the last output line a Snapshot keeps of each rank.
const maxLastLine = 200

// RankState is one rank of a running Group as Snapshot sees it: enough for
// a live view (mpspawn status and top) without touching the rank.
type RankState struct {
	Rank, LocalRank int
	Pid             int
	Started         time.Time
	// Exited is set once the rank's process has exited (it stays a
	// zombie until the Group is done signalling its process group);
	// ExitCode is its status, or -1 when Signal killed it. Stopped is
	// set when the launcher had signalled it before it exited.
	Exited   bool
	ExitCode int
	Signal   syscall.Signal
	Stopped  bool
	// LastOutput is when the rank last wrote a line to stdout or stderr
	// (zero: never); LastLine is that line, without its newline, cut to
	// 200 bytes.
	LastOutput time.Time
	LastLine   string
}

// rankLive is what Snapshot reads of a rank while the Group runs: written
// by its relays (output) and by the supervisor (exit), under mu.
type rankLive struct {
	mu       sync.Mutex
	line     [maxLastLine]byte
	n        int
	at       int64 // UnixNano of the last line; 0: none yet
	exited   bool
	code     int
	sig      syscall.Signal
	stopped  bool
	snapshot string // line[:n] as a string, made by Snapshot once per new line
	made     int64  // the at of snapshot
}

// record keeps line (one line, as the relay writes it) as the rank's last.
func (l *rankLive) record(line []byte) {
	if len(line) > 0 && line[len(line)-1] == '\n' {
		line = line[:len(line)-1]
	}
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	now := time.Now().UnixNano()
	l.mu.Lock()
	l.n = copy(l.line[:], line)
	l.at = now
	l.mu.Unlock()
}

// setExit records how the rank ended, for Snapshot.
func (l *rankLive) setExit(r *RankResult) {
	l.mu.Lock()
	l.exited, l.code, l.sig, l.stopped = true, r.ExitCode, r.Signal, r.Stopped
	l.mu.Unlock()
}

// lastLineWriter passes each line on to w and records it as the rank's last.
type lastLineWriter struct {
	w    io.Writer
	live *rankLive
}

func (r lastLineWriter) Write(p []byte) (int, error) {
	r.live.record(p)
	return r.w.Write(p)
}

// Snapshot fills dst (reused when it has room) with the state of every
// rank, ordered by rank, and returns it. It is cheap and safe to call from
// any goroutine while the Group runs and after Wait; it never touches the
// ranks' processes. A last line is made into a string only when it changed
// since the snapshot before.
func (g *Group) Snapshot(dst []RankState) []RankState {
	dst = dst[:0]
	for _, rp := range g.ranks {
		l := &rp.live
		l.mu.Lock()
		if l.made != l.at {
			l.snapshot, l.made = cutUTF8(l.line[:l.n]), l.at
		}
		st := RankState{
			Rank: rp.spec.Rank, LocalRank: rp.spec.LocalRank, Pid: rp.proc.pid(), Started: rp.started,
			Exited: l.exited, ExitCode: l.code, Signal: l.sig, Stopped: l.stopped, LastLine: l.snapshot,
		}
		if l.at != 0 {
			st.LastOutput = time.Unix(0, l.at)
		}
		l.mu.Unlock()
		dst = append(dst, st)
	}
	return dst
}

// cutUTF8 is b as a string, less a UTF-8 sequence the 200-byte cut split.
func cutUTF8(b []byte) string {
	if len(b) == maxLastLine {
		for i := len(b) - 1; i >= 0 && i >= len(b)-4; i-- {
			if b[i] < 0x80 {
				break
			}
			if b[i] >= 0xC0 { // the start of the last sequence
				need := 2
				switch {
				case b[i] >= 0xF0:
					need = 4
				case b[i] >= 0xE0:
					need = 3
				}
				if len(b)-i < need {
					b = b[:i]
				}
				break
			}
		}
	}
	return string(b)
}
