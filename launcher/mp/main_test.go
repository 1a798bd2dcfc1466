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
	if os.Getenv("MPSPAWN_TEST_HELPER") == "forgetful" {
		os.Exit(helperForgetful()) // a binary whose main forgets Main
	}
	Main()
	switch os.Getenv("MPSPAWN_TEST_HELPER") {
	case "spawner":
		os.Exit(helperSpawner())
	case "pool-replaced":
		os.Exit(helperPoolReplaced())
	}
	goleak.VerifyTestMain(m)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
