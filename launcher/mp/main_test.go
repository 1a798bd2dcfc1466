//go:build linux

package mp

import (
	"fmt"
	"os"
	"testing"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/internal/testrank"
	"go.uber.org/goleak"
)

// The test binary is also the rank binary: TestMain calls Main first, as
// every binary using the package must. Run under one of the names below
// (argv[0], the way testrank.Run tells the helper rank) it is instead a
// parent for the tests that need one in another process; the ranks such a
// parent starts have the same argv[0], so they run the same main.
func TestMain(m *testing.M) {
	testrank.Run(map[string]func([]string) int{
		"forgetful":     func([]string) int { return helperForgetful() }, // a binary whose main forgets Main
		"spawner":       mainFirst(helperSpawner),
		"pool-replaced": mainFirst(helperPoolReplaced),
	})
	Main()
	goleak.VerifyTestMain(m, proctest.IgnoreGuard)
}

// mainFirst is the main of a parent binary that calls Main first, as it
// should, and is given the path to write its readiness line to.
func mainFirst(parent func(ready string) int) func(args []string) int {
	return func(args []string) int {
		Main()
		if len(args) != 1 {
			fmt.Fprintln(os.Stderr, "usage: PARENT READY")
			return 2
		}
		return parent(args[0])
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
