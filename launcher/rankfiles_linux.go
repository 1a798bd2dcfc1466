package launcher

// The files and environment of a rank, the same for both start methods.

import (
	"io"
	"os"
	"strings"
)

// openFiles returns the rank's files 0, 1, 2, ...: /dev/null as stdin, a
// pipe per output stream that has a writer (relayed line by line from now
// on; /dev/null otherwise), then Spec.ExtraFiles. release closes the
// launcher's copies of what the rank inherits; call it once the rank has
// them. After a failed start, closePipes ends the relays.
func (rp *rankProc) openFiles() (files []*os.File, release func(), err error) {
	s := rp.spec
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, err
	}
	childEnds := []*os.File{devnull}
	release = func() {
		for _, f := range childEnds {
			f.Close()
		}
	}
	files = append(make([]*os.File, 0, 3+len(s.ExtraFiles)), devnull)
	for _, w := range []io.Writer{s.Stdout, s.Stderr} {
		if w == nil {
			files = append(files, devnull)
			continue
		}
		r, cw, err := os.Pipe()
		if err != nil {
			release()
			rp.closePipes()
			return nil, nil, err
		}
		// The rank's end blocks, as a process's stdout does: os.Pipe made
		// it non-blocking for the poller, and a rank writing to a full
		// pipe must wait, not fail with EAGAIN. (Fd does this, as os/exec's
		// start does for the spawn method; the forkserver's transport does
		// not.)
		_ = cw.Fd()
		childEnds = append(childEnds, cw)
		files = append(files, cw)
		rp.pipes = append(rp.pipes, r)
		rp.relays.Add(1)
		var src io.Reader = r
		if rp.activity != nil {
			src = activityReader{r, rp.activity}
		}
		go func() {
			defer rp.relays.Done()
			relayLines(src, lastLineWriter{w, &rp.live})
		}()
	}
	return append(files, s.ExtraFiles...), release, nil
}

// closePipes closes the read ends after a failed start, ending the relays.
func (rp *rankProc) closePipes() {
	for _, f := range rp.pipes {
		f.Close()
	}
	rp.relays.Wait()
}

// dedupEnv keeps the last value of each variable, as os/exec does.
func dedupEnv(env []string) []string {
	last := make(map[string]int, len(env))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = i
	}
	if len(last) == len(env) {
		return env
	}
	out := make([]string, 0, len(last))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if last[k] == i {
			out = append(out, kv)
		}
	}
	return out
}
