//go:build linux

package mp

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// TestMapErrorOnePrefix: a Map's error reads as one sentence with one
// "mp:" prefix, naming the first failed item, its worker and pid.
func TestMapErrorOnePrefix(t *testing.T) {
	p := newTestPool(t, 1)
	defer p.Join()
	defer p.Close()
	_, err := Map(context.Background(), p, squareFn, []int{-3, 1, -3}, 1)
	var re *RankError
	if !errors.As(err, &re) {
		t.Fatalf("Map error = %v; want a *RankError inside", err)
	}
	want := fmt.Sprintf("mp: 2 items failed (0, 2); first: item 0 on worker 0 (pid %d): negative three", re.Pid)
	if err.Error() != want {
		t.Errorf("Map error = %q; want %q", err, want)
	}
	var ie *ItemError
	if !errors.As(err, &ie) || ie.Error() != fmt.Sprintf("mp: item 0 on worker 0 (pid %d): negative three", re.Pid) {
		t.Errorf("ItemError = %v; want one mp: prefix, the worker and its pid", ie)
	}
}

// TestPanicStackStartsAtUser: a panic's stack opens with the registered
// function's name and its Go name, then the frame that panicked; neither
// the runtime's panic machinery, nor runtime/debug, nor the package's
// frames that called the function are in it.
func TestPanicStackStartsAtUser(t *testing.T) {
	s, err := Spawn(context.Background(), failFn, 4, failArgs{Rank: 2, Kind: "panic"}, &Options{Stdout: discard{}, Stderr: discard{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Join()
	var re *RankError
	if !errors.As(err, &re) {
		t.Fatalf("Join error = %v; want a *RankError", err)
	}
	head := regexp.MustCompile(`^panic in "test.fail" \(github.com/mpspawn/mpspawn/launcher/mp\.init\.func\d+\):\ngithub.com/mpspawn/mpspawn/launcher/mp\.failNow\(\.\.\.\)\n\t\S+/spawn_test.go:\d+\n`)
	if !head.MatchString(re.Stack) {
		t.Errorf("stack = %q; want it to open with the registered function's names, then failNow", re.Stack)
	}
	if !strings.Contains(re.Stack, panicLine(t)) {
		t.Errorf("stack does not name %s:\n%s", panicLine(t), re.Stack)
	}
	for _, bad := range []string{"runtime/debug", "runtime.gopanic", "runtime.panicdivide", "mp.panicError", "mp.recoverInto", "mp.register", "mp.serveRank", "goroutine "} {
		if strings.Contains(re.Stack, bad) {
			t.Errorf("stack names %q:\n%s", bad, re.Stack)
		}
	}
}
