//go:build linux

package launcher

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/proctest"
	"github.com/mpspawn/mpspawn/ipc"
)

// TestChannelWrongPeerStopsTheJob: a frame on a rank's control channel
// written by another process (here the rank's child) stops the job, and
// the cause names the rank, its pid and the pid that wrote.
func TestChannelWrongPeerStopsTheJob(t *testing.T) {
	specs := []Spec{helperSpec(0, "peer-liar")}
	broker := ipc.NewBroker()
	defer broker.Close()
	chans, err := AddChannels(broker, specs)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(context.Background(), specs, Options{Stop: StopOptions{GracePeriod: time.Second}})
	if err != nil {
		chans.Close()
		t.Fatal(err)
	}
	chans.Serve(g, nil)
	res := waitResult(t, g)
	chans.Close()
	var pe *ipc.PeerError
	if !errors.As(res.Cause, &pe) || pe.Rank != 0 || pe.Want != res.Ranks[0].Pid || pe.Got == pe.Want || pe.Got <= 0 {
		t.Fatalf("Result.Cause = %v; want an *ipc.PeerError for rank 0 (pid %d) naming another pid", res.Cause, res.Ranks[0].Pid)
	}
	if !res.Ranks[0].Stopped {
		t.Error("the rank was not stopped")
	}
}

// floodAndLeave is a rank (Python, as a script rank of `mpspawn --ipc`):
// it starts a child in a session of its own, with an empty environment
// (so that no containment of the launcher knows it), holding the rank's
// control channel and never reading it; floods the broker with 100 puts
// of 60 kB values and 100 gets that take them back (6 MB of replies, far
// more than the channel holds unread); prints the child's pid and exits 0.
const floodAndLeave = `
import os, struct, subprocess, sys
fd = int(os.environ["MPSPAWN_CONTROL_FD"])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env={},
                         start_new_session=True, pass_fds=(fd,),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
hdr = struct.Struct(">3sBBBBBQI")
def request(i, body):
    return hdr.pack(b"MPS", 1, 5, 0, 0, 0, i, len(body)) + body
queue = struct.pack("<QI", 77, 0)
put = bytes([4]) + queue + struct.pack("<H", 0) + bytes(60000)
get = bytes([5]) + queue
os.write(fd, b"".join(request(i, put) + request(1000 + i, get) for i in range(1, 101)))
print(child.pid, flush=True)
`

// TestChannelsEndWhenAChildHoldsThem: a rank floods the broker, leaves a
// child that holds its control channel (and escapes containment) and
// exits 0: once every rank has exited, the channels and the broker close
// promptly — within channelDrain and a margin, not the broker's 10 s
// write timeout per reply that nobody reads — and the job succeeds.
func TestChannelsEndWhenAChildHoldsThem(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is needed (scripts/install-test-deps.sh installs it)")
		}
		t.Skip("no python3")
	}
	lines := make(chan string, 1)
	specs := []Spec{{Rank: 0, Path: py, Args: []string{"python3", "-c", floodAndLeave}, Env: os.Environ(), Stdout: lineFunc(func(l string) { lines <- l })}}
	broker := ipc.NewBroker()
	chans, err := AddChannels(broker, specs)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(context.Background(), specs, Options{Containment: ContainProcessGroup, Stop: StopOptions{GracePeriod: time.Second}})
	if err != nil {
		chans.Close()
		broker.Close()
		t.Fatal(err)
	}
	chans.Serve(g, nil)
	res := waitResult(t, g)
	select {
	case l := <-lines:
		if pid, err := strconv.Atoi(strings.TrimSpace(l)); err == nil && pid > 0 {
			t.Cleanup(func() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				proctest.WaitExit(pid, 10*time.Second)
			})
		}
	default:
		t.Errorf("the rank printed no child pid (it exited %s)", res.Ranks[0].Status())
	}
	if res.Ranks[0].Failed() {
		t.Errorf("rank 0 %s; want success", res.Ranks[0].Status())
	}
	closed := make(chan []string, 1)
	go func() {
		chans.Close()
		closed <- broker.Close()
	}()
	bound := channelDrain + 4*time.Second
	select {
	case leaks := <-closed:
		if len(leaks) != 0 {
			t.Errorf("leaks: %q", leaks)
		}
	case <-time.After(bound):
		t.Fatalf("the channels and the broker did not close within %v of the last rank's exit", bound)
	}
	if err := chans.Err(0); err != nil {
		t.Errorf("channel 0: %v; want none (the rank broke no rule)", err)
	}
}

// lineFunc is an io.Writer that calls fn with each line written (a rank's
// output comes one complete line per write).
type lineFunc func(string)

func (f lineFunc) Write(b []byte) (int, error) {
	f(string(b))
	return len(b), nil
}

// TestAddChannelsRefusesBadLimits: a malformed broker limit in the
// environment is an error before any rank starts, naming the variable.
func TestAddChannelsRefusesBadLimits(t *testing.T) {
	t.Setenv(ipc.EnvMaxPending, "lots")
	broker := ipc.NewBroker()
	defer broker.Close()
	specs := []Spec{helperSpec(0, "exit", "0")}
	if chans, err := AddChannels(broker, specs); err == nil || !strings.Contains(err.Error(), `MPSPAWN_IPC_MAX_PENDING="lots": want a positive integer`) {
		if chans != nil {
			chans.Close()
		}
		t.Fatalf("AddChannels() = %v; want the malformed limit named", err)
	}
	if len(specs[0].ExtraFiles) != 0 {
		t.Errorf("the spec got %d extra files; want none", len(specs[0].ExtraFiles))
	}
}
