// Command testsum runs `go test -json ARGS` and prints what a person
// watching `make test` needs: a line per finished package, the whole
// output of every failed test as it fails, a progress line at least every
// 30 seconds naming what still runs, and at the end how many tests passed,
// failed and were skipped, with each skip's reason. It exits with go
// test's exit code.
//
//	go run ./internal/testsum -race -count=1 ./...
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"
)

// event is one line of test2json's output.
type event struct {
	Time    time.Time
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// heartbeat is the longest the summary stays silent.
const heartbeat = 30 * time.Second

func main() {
	cmd := exec.Command("go", append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	s := newSummary(os.Stdout)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(heartbeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s.progress()
			}
		}
	}()
	s.read(out)
	close(done)
	wg.Wait()
	err = cmd.Wait()
	s.final()
	if ee, ok := err.(*exec.ExitError); ok {
		os.Exit(ee.ExitCode())
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
}

type testKey struct{ pkg, test string }

// summary is the state of the run, shared by the reader and the ticker.
type summary struct {
	mu       sync.Mutex
	w        io.Writer
	start    time.Time
	last     time.Time // of the last line printed
	output   map[testKey][]string
	running  map[testKey]time.Time
	pass     int
	fail     []string
	skip     []string // "pkg TestX: reason"
	packages int
}

func newSummary(w io.Writer) *summary {
	now := time.Now()
	return &summary{w: w, start: now, last: now, output: map[testKey][]string{}, running: map[testKey]time.Time{}}
}

func (s *summary) printf(format string, args ...any) {
	fmt.Fprintf(s.w, format, args...)
	s.last = time.Now()
}

func (s *summary) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			s.mu.Lock()
			s.printf("%s\n", sc.Text()) // not JSON: a build error, say
			s.mu.Unlock()
			continue
		}
		s.mu.Lock()
		s.event(e)
		s.mu.Unlock()
	}
}

func (s *summary) event(e event) {
	k := testKey{e.Package, e.Test}
	switch e.Action {
	case "run":
		s.running[k] = time.Now()
	case "output":
		if len(s.output[k]) < 10000 {
			s.output[k] = append(s.output[k], e.Output)
		}
	case "pass", "fail", "skip":
		delete(s.running, k)
		s.finish(k, e)
		delete(s.output, k)
	}
}

func (s *summary) finish(k testKey, e event) {
	short := strings.TrimPrefix(k.pkg, "github.com/mpspawn/mpspawn/")
	switch {
	case k.test == "" && e.Action == "fail":
		s.packages++
		s.printf("FAIL %s (%.1fs)\n%s", short, e.Elapsed, strings.Join(s.output[k], ""))
	case k.test == "":
		s.packages++
		s.printf("%-4s %s (%.1fs)\n", strings.ToLower(e.Action), short, e.Elapsed)
	case e.Action == "fail":
		s.fail = append(s.fail, short+" "+k.test)
		s.printf("--- FAIL %s %s (%.1fs)\n%s", short, k.test, e.Elapsed, strings.Join(s.output[k], ""))
	case e.Action == "skip":
		s.skip = append(s.skip, fmt.Sprintf("%s %s: %s", short, k.test, skipReason(s.output[k])))
	default:
		s.pass++
	}
}

// skipReason is the message a test gave t.Skip: its last output line
// before the "--- SKIP" line.
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "--- SKIP") || strings.HasPrefix(l, "=== ") {
			continue
		}
		return l
	}
	return "(no reason given)"
}

// progress prints what still runs, when nothing was printed for a while.
func (s *summary) progress() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.last) < heartbeat-time.Second {
		return
	}
	var names []string
	for k, t := range s.running {
		if k.test != "" && !strings.Contains(k.test, "/") {
			names = append(names, fmt.Sprintf("%s (%ds)", k.test, int(time.Since(t).Seconds())))
		}
	}
	sort.Strings(names)
	if len(names) > 6 {
		names = append(names[:6], fmt.Sprintf("and %d more", len(names)-6))
	}
	s.printf("... %s: %d packages done, %d tests passed; running %s\n",
		time.Since(s.start).Round(time.Second), s.packages, s.pass, strings.Join(names, ", "))
}

func (s *summary) final() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.printf("\n%d tests passed, %d failed, %d skipped in %s\n", s.pass, len(s.fail), len(s.skip), time.Since(s.start).Round(time.Second))
	if len(s.skip) > 0 {
		s.printf("skipped:\n")
		for _, l := range s.skip {
			s.printf("  %s\n", l)
		}
	}
	if len(s.fail) > 0 {
		s.printf("failed:\n")
		for _, l := range s.fail {
			s.printf("  %s\n", l)
		}
	}
}
