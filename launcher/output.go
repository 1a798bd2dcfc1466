package launcher

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/internal/safefs"
)

// Streams is a set of standard streams, in torchrun's numbering:
// 0 none, 1 stdout, 2 stderr, 3 both.
type Streams uint8

// The streams.
const (
	StreamNone   Streams = 0
	StreamStdout Streams = 1
	StreamStderr Streams = 2
	StreamBoth   Streams = 3
)

// StreamMap gives each local rank its Streams: a default, and exceptions.
type StreamMap struct {
	Default Streams
	Ranks   map[int]Streams
}

// For returns the streams of a local rank.
func (m StreamMap) For(localRank int) Streams {
	if s, ok := m.Ranks[localRank]; ok {
		return s
	}
	return m.Default
}

// ParseStreams parses torchrun's --redirects/--tee values: a single digit
// 0-3 for every rank, or a map "0:1,3:2,12:3" of local rank to streams.
// Unlike torchrun, ranks may have any number of digits. The error is a
// *StreamsError.
func ParseStreams(s string) (StreamMap, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return StreamMap{}, nil
	}
	if !strings.Contains(s, ":") {
		v, ok := parseStream(s)
		if !ok {
			return StreamMap{}, &StreamsError{Value: s, Entry: s, Want: wantStreams}
		}
		return StreamMap{Default: v}, nil
	}
	m := StreamMap{Ranks: map[int]Streams{}}
	for _, part := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), ":")
		r, err := strconv.Atoi(k)
		if err != nil || r < 0 {
			return StreamMap{}, &StreamsError{Value: s, Entry: k, Want: "a local rank"}
		}
		st, ok := parseStream(v)
		if !ok {
			return StreamMap{}, &StreamsError{Value: s, Entry: v, Want: wantStreams}
		}
		m.Ranks[r] = st
	}
	return m, nil
}

const wantStreams = "0 (none), 1 (stdout), 2 (stderr) or 3 (both)"

func parseStream(s string) (Streams, bool) {
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 || v > 3 {
		return 0, false
	}
	return Streams(v), true
}

// StreamsError is a value that ParseStreams cannot read.
type StreamsError struct {
	Value string // the value, without surrounding spaces
	Entry string // the part that is wrong: all of Value, or a rank or streams number in a map
	Want  string // what Entry should be: "a local rank", or "0 (none), 1 (stdout), 2 (stderr) or 3 (both)"
}

func (e *StreamsError) Error() string {
	if e.Entry == e.Value {
		return fmt.Sprintf("launcher: streams %q: want %s", e.Value, e.Want)
	}
	return fmt.Sprintf("launcher: streams %q: %q: want %s", e.Value, e.Entry, e.Want)
}

// DefaultPrefix is the console line prefix template unless one is given.
const DefaultPrefix = "[${rank}]: "

// CheckPrefix reports a console prefix template that Output cannot
// expand: one with a "${" that no "}" closes. The error is a
// *PrefixError.
func CheckPrefix(template string) error {
	for i := 0; i < len(template); i++ {
		if strings.HasPrefix(template[i:], "${") {
			end := strings.IndexByte(template[i:], '}')
			if end < 0 {
				return &PrefixError{Template: template, At: i}
			}
			i += end
		}
	}
	return nil
}

// PrefixError is a console prefix template with a "${" at byte At that
// no "}" closes.
type PrefixError struct {
	Template string
	At       int
}

func (e *PrefixError) Error() string {
	return fmt.Sprintf("launcher: prefix template %q: the ${ at byte %d is not closed", e.Template, e.At)
}

// Output routes rank output. Each stream of each rank goes to the console,
// to a file under Dir, or both, as torchrun's --redirects and --tee say:
// a stream in Tee goes to both, a stream in Redirects only to its file,
// any other only to the console. Console lines carry the prefix and, when
// Timestamps is set, the time the line was read. Lines are never torn or
// interleaved: each line reaches the console in one write, under a lock.
type Output struct {
	Stdout, Stderr io.Writer // the console; nil means os.Stdout / os.Stderr

	// Prefix is a template for the console line prefix; ${rank},
	// ${local_rank} and ${role_name} are replaced. Empty means none.
	Prefix     string
	RoleName   string
	Timestamps bool

	// Filter, when not nil, lists the local ranks shown on the console;
	// files get every rank.
	Filter map[int]bool

	Redirects, Tee StreamMap

	// Dir holds per-rank files: Dir/<local_rank>/stdout.log and stderr.log,
	// made with package safefs's rules: no link another user planted in a
	// directory others can write is followed. Files are made with mode 0666
	// less the umask.
	Dir string

	// DrainTimeout bounds how long Close waits for a console to take the
	// lines queued for it. Zero means one second.
	DrainTimeout time.Duration

	once       sync.Once
	out, errw  *console
	stalled    []string // console streams given up on, set by Close
	filesMu    sync.Mutex
	openFiles  []*os.File
	dir        *safefs.Dir // Dir, held open once a file is made
	timeFormat string
}

// console is one console stream shared by every rank. Lines go through a
// bounded queue to one writer goroutine, which writes each whole (so lines
// are never torn or interleaved) and in order; a rank's relay waits only
// while the queue is full. A console nobody reads (a pager left open, a
// frozen ssh session, Ctrl-S) would block that writer for good: the
// launcher then gives up on the console (abandon), and later lines are
// dropped instead of blocking the relays.
type console struct {
	w        io.Writer
	queue    chan []byte
	closing  chan struct{} // Close: write what is queued, then stop
	gone     chan struct{} // given up on: writes are dropped
	done     chan struct{} // the writer goroutine has returned
	stopOnce sync.Once
	goneOnce sync.Once
}

// consoleQueue is how many lines wait for a slow console before the
// ranks' relays wait too.
const consoleQueue = 256

func newConsole(w io.Writer) *console {
	c := &console{w: w, queue: make(chan []byte, consoleQueue), closing: make(chan struct{}), gone: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *console) run() {
	defer close(c.done)
	for {
		select {
		case b := <-c.queue:
			_, _ = c.w.Write(b)
		case <-c.closing:
			for {
				select {
				case b := <-c.queue:
					_, _ = c.w.Write(b)
				default:
					return
				}
			}
		}
	}
}

// errConsoleGone is what writes to a console given up on return.
var errConsoleGone = errors.New("launcher: console given up on: nobody reads it")

// Write queues one line; p may be reused once it returns.
func (c *console) Write(p []byte) (int, error) {
	b := append([]byte(nil), p...)
	select {
	case c.queue <- b:
		return len(p), nil
	case <-c.gone:
		return 0, errConsoleGone
	}
}

// abandon gives up on the console: queued and later lines are dropped.
func (c *console) abandon() { c.goneOnce.Do(func() { close(c.gone) }) }

// close writes what is queued, waiting at most d for the console to take
// it, and reports whether it did; if not, the console is abandoned.
func (c *console) close(d time.Duration) bool {
	c.stopOnce.Do(func() { close(c.closing) })
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
		c.abandon() // nothing writes any more
		return true
	case <-t.C:
		c.abandon()
		return false
	}
}

func (o *Output) init() {
	o.once.Do(func() {
		out, errw := o.Stdout, o.Stderr
		if out == nil {
			out = os.Stdout
		}
		if errw == nil {
			errw = os.Stderr
		}
		o.out, o.errw = newConsole(out), newConsole(errw)
		o.timeFormat = "2006-01-02T15:04:05.000Z07:00 "
	})
}

// Open returns the writers for one rank's stdout and stderr, opening its
// files when any stream goes to a file. Close closes every file opened.
func (o *Output) Open(rank, localRank int) (stdout, stderr io.Writer, err error) {
	o.init()
	prefix := os.Expand(o.Prefix, func(k string) string {
		switch k {
		case "rank":
			return strconv.Itoa(rank)
		case "local_rank":
			return strconv.Itoa(localRank)
		case "role_name":
			return o.RoleName
		}
		return "${" + k + "}"
	})
	show := o.Filter == nil || o.Filter[localRank]
	redir, tee := o.Redirects.For(localRank), o.Tee.For(localRank)
	mk := func(s Streams, console *console, name string) (io.Writer, error) {
		w := &rankWriter{prefix: []byte(prefix), out: o, backup: console}
		toFile := (redir|tee)&s != 0
		if show && (tee&s != 0 || redir&s == 0) {
			w.console = console
		}
		if toFile {
			f, err := o.createFile(localRank, name)
			if err != nil {
				return nil, err
			}
			w.file = f
		}
		if w.console == nil && w.file == nil {
			return nil, nil
		}
		return w, nil
	}
	if stdout, err = mk(StreamStdout, o.out, "stdout.log"); err != nil {
		return nil, nil, err
	}
	if stderr, err = mk(StreamStderr, o.errw, "stderr.log"); err != nil {
		return nil, nil, err
	}
	return stdout, stderr, nil
}

func (o *Output) createFile(localRank int, name string) (*os.File, error) {
	o.filesMu.Lock()
	defer o.filesMu.Unlock()
	if o.dir == nil {
		d, err := safefs.MkdirAll(o.Dir, 0o755)
		if err != nil {
			return nil, fmt.Errorf("launcher: log dir: %w", err)
		}
		o.dir = d
	}
	lr := strconv.Itoa(localRank)
	sub, err := o.dir.MkdirAll(lr, 0o755)
	if err != nil {
		return nil, fmt.Errorf("launcher: log dir: %w", err)
	}
	_ = sub.Close()
	f, err := o.dir.Create(filepath.Join(lr, name), 0o666)
	if err != nil {
		return nil, fmt.Errorf("launcher: log file: %w", err)
	}
	o.openFiles = append(o.openFiles, f)
	return f, nil
}

// Close writes the console lines still queued (waiting at most
// DrainTimeout for a console that does not take them, which is then given
// up on: see Stalled) and closes the files Open created. An Output cannot
// be used after Close.
func (o *Output) Close() error {
	o.init()
	d := o.DrainTimeout
	if d <= 0 {
		d = time.Second
	}
	// Both at once: a stalled stdout must not cost stderr's bound too.
	outOK := make(chan bool, 1)
	go func() { outOK <- o.out.close(d) }()
	errOK := o.errw.close(d)
	if !<-outOK {
		o.stalled = append(o.stalled, "stdout")
	}
	if !errOK {
		o.stalled = append(o.stalled, "stderr")
	}
	o.filesMu.Lock()
	defer o.filesMu.Unlock()
	var first error
	for _, f := range o.openFiles {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	o.openFiles = nil
	if o.dir != nil {
		_ = o.dir.Close()
		o.dir = nil
	}
	return first
}

// Stalled names the console streams ("stdout", "stderr") that did not take
// their lines within DrainTimeout at Close and were given up on: nobody
// reads them. Call it after Close.
func (o *Output) Stalled() []string { return o.stalled }

// Abandon gives up on the consoles now: lines queued for them and later
// ones are dropped, and relays blocked on a full queue go on.
func (o *Output) Abandon() {
	o.init()
	o.out.abandon()
	o.errw.abandon()
}

// rankWriter receives one complete line per Write from the relay.
type rankWriter struct {
	prefix  []byte
	out     *Output
	console *console
	backup  *console // where lines go when the file fails, if not already to console
	file    *os.File
	fileErr error // the file's first write error; it is written no more
	buf     []byte
}

// fileFailed stops writing the rank's log file after a write error (a
// full disk, say), says so once on the console, and sends the later lines
// to the console instead, so that none is lost.
func (w *rankWriter) fileFailed(err error) {
	w.fileErr = err
	note := fmt.Sprintf("mpspawn: warning: log file %s: %v; later lines go to the console only\n", w.file.Name(), err)
	_, _ = w.out.errw.Write([]byte(note))
	if w.console == nil {
		w.console = w.backup
	}
}

// Abandon gives up on the console this writer shares (see Output.Abandon).
func (w *rankWriter) Abandon() { w.out.Abandon() }

func (w *rankWriter) Write(line []byte) (int, error) {
	if w.file != nil && w.fileErr == nil {
		if _, err := w.file.Write(line); err != nil {
			w.fileFailed(err)
		}
	}
	if w.console != nil {
		b := w.buf[:0]
		if w.out.Timestamps {
			b = time.Now().AppendFormat(b, w.out.timeFormat)
		}
		b = append(b, w.prefix...)
		b = append(b, line...)
		if len(line) == 0 || line[len(line)-1] != '\n' {
			b = append(b, '\n')
		}
		_, _ = w.console.Write(b)
		w.buf = b
	}
	return len(line), nil
}

// Reopen returns a new Output with o's settings, for the next round of a
// job: an Output cannot be used after Close.
func (o *Output) Reopen() *Output {
	return &Output{Stdout: o.Stdout, Stderr: o.Stderr, Prefix: o.Prefix, RoleName: o.RoleName, Timestamps: o.Timestamps,
		Filter: o.Filter, Redirects: o.Redirects, Tee: o.Tee, Dir: o.Dir, DrainTimeout: o.DrainTimeout}
}
