package mpspawn

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies checks, with go list -deps, what each program and layer
// links: the launcher no grpc, protobuf or etcd module (Go runs every
// linked package's init at every start, single-node jobs included: the
// rendezvous speaks to etcd's JSON gateway instead), and the layers only
// what is below them.
func TestDependencies(t *testing.T) {
	const mod = "github.com/mpspawn/mpspawn/"
	for _, c := range []struct {
		pkg    string
		banned []string
		why    string
	}{
		{"./cmd/mpspawn", []string{"google.golang.org/grpc", "google.golang.org/protobuf", "github.com/golang/protobuf", "go.etcd.io/", "go.uber.org/zap"},
			"every launcher start would pay their package init"},
		{"./launcher", []string{mod + "rendezvous", mod + "launcher/job", mod + "launcher/contract", mod + "launcher/mp"},
			"the core is below the job, the contract and the Go API"},
		{"./launcher/mp", []string{mod + "rendezvous/etcd", mod + "launcher/job", "net/http"},
			"a Go API program, which its ranks re-execute, links no etcd client"},
		{"./ipc", []string{mod + "launcher"}, "ipc is below the launcher"},
	} {
		out, err := exec.Command("go", "list", "-deps", c.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", c.pkg, err)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s: %d packages: %q", c.pkg, len(deps), deps)
		}
		for _, d := range deps {
			for _, b := range c.banned {
				if d == b || strings.HasPrefix(d, strings.TrimSuffix(b, "/")+"/") {
					t.Errorf("%s links %s (%s)", c.pkg, d, c.why)
				}
			}
		}
	}
}
