//go:build linux

package mp

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// The test binary is also the rank binary: TestMain calls Main first, as
// every binary using the package must. With MPSPAWN_TEST_HELPER set it is
// instead a parent for the tests that need one in another process.
func TestMain(m *testing.M) {
	Main()
	switch os.Getenv("MPSPAWN_TEST_HELPER") {
	case "spawner":
		os.Exit(helperSpawner())
	}
	goleak.VerifyTestMain(m)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
