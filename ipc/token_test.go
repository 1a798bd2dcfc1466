//go:build linux

package ipc

import (
	"strings"
	"testing"
)

// forge returns h, a handle in the hex form the helper ranks read, with
// one bit of its token flipped: the id, kind, size and producer are the
// genuine handle's, so that only the token comparison can refuse it.
func forge(t *testing.T, h string) string {
	t.Helper()
	hd, err := parseHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	hd.Token[len(hd.Token)-1] ^= 1
	return hexHandle(hd)
}

// TestForgedTokenGivenHandle: a rank that was given a handle, and holds
// it, still cannot use it under a wrong token: the token is checked, not
// only whether the rank may have the handle's id.
func TestForgedTokenGivenHandle(t *testing.T) {
	j := newTestJob(t, 2)
	h := j.do(0, "make 4096 1")
	if got := j.do(1, "take"); !strings.HasPrefix(got, h+" size=4096 sum=4096") {
		t.Fatalf("take: %q", got)
	}
	forged := forge(t, h)
	for _, cmd := range []string{"open", "release"} {
		if got := j.do(1, "%s %s", cmd, forged); got != "error: bad handle" {
			t.Errorf("rank 1, given %s, runs %q with a wrong token: %q; want a bad handle", h, cmd, got)
		}
	}
	// The genuine handle still works: the refusals above changed nothing.
	if got := j.do(1, "open %s", h); got != "size=4096" {
		t.Errorf("open with the right token: %q; want size=4096", got)
	}
}

// TestForgedTokenPublicHandle: a handle the launcher published is open to
// every rank, so its token is all that protects it: a wrong token is
// refused, the right one opens it.
func TestForgedTokenPublicHandle(t *testing.T) {
	j := newTestJob(t, 2)
	f := memfd(t, "the launcher's descriptor")
	h, err := j.broker.Publish(KindFD, f, 25)
	if err != nil {
		t.Fatal(err)
	}
	forged := forge(t, hexHandle(h))
	for r := range 2 {
		if got := j.do(r, "openfd %s", forged); got != "error: bad handle" {
			t.Errorf("rank %d opens the launcher's %s with a wrong token: %q; want a bad handle", r, h, got)
		}
	}
	if got := j.do(1, "openfd %s", hexHandle(h)); got != "opened" {
		t.Errorf("rank 1 opens the launcher's %s: %q; want opened", h, got)
	}
	if err := j.broker.Release(h); err != nil {
		t.Errorf("Release(%s) = %v", h, err)
	}
}
