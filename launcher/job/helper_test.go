//go:build linux

package job

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
	"github.com/mpspawn/mpspawn/launcher"
)

// The test binary is also the rank program: run as testrank.Name it runs
// the helper rank's modes and exits (the os/exec helper pattern).
func TestMain(m *testing.M) {
	testrank.Run(map[string]func([]string) int{testrank.Name: testrank.Main})
	os.Exit(m.Run())
}

// helperSpec is a spec running the test binary as the helper rank.
func helperSpec(rank int, mode string, args ...string) launcher.Spec {
	return launcher.Spec{
		Rank: rank, LocalRank: rank, Path: testrank.Exe,
		Args: append([]string{testrank.Name, mode}, args...),
		Env:  append(os.Environ(), "RANK="+strconv.Itoa(rank)),
	}
}

func waitResult(t *testing.T, g *launcher.Group) *launcher.Result {
	t.Helper()
	done := make(chan *launcher.Result, 1)
	go func() { done <- g.Wait() }()
	select {
	case res := <-done:
		return res
	case <-time.After(60 * time.Second):
		t.Fatal("group did not end within 60s")
		return nil
	}
}
