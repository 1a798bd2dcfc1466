//go:build linux

package ipc

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pythonClient is the Python client's source (mpspawn.ipc), relative to this package.
const pythonClient = "python/mpspawn/ipc.py"

// TestPythonConstants: every protocol constant of the Python client has
// the Go side's value, and the Python client names every one of them. The
// Python file is parsed, not imported: no interpreter is needed.
func TestPythonConstants(t *testing.T) {
	src, err := os.ReadFile(pythonClient)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"VERSION": wireVersion, "MAX_FILES": MaxFiles,
		"FRAME_HELLO": int(FrameHello), "FRAME_ARGS": int(FrameArgs), "FRAME_RESULT": int(FrameResult), "FRAME_ERROR": int(FrameError),
		"FRAME_REQUEST": int(FrameRequest), "FRAME_REPLY": int(FrameReply), "FRAME_CLOSE": int(FrameClose), "FRAME_NOTICE": int(FrameNotice),
		"OP_PUBLISH": opPublish, "OP_OPEN": opOpen, "OP_RELEASE": opRelease, "OP_PUT": opPut, "OP_GET": opGet,
		"OP_TASK_DONE": opTaskDone, "OP_JOIN": opJoin, "OP_WAIT_UNHELD": opWaitUnheld, "OP_CHECK": opCheck,
		"OP_PUT_BATCH": opPutBatch, "OP_GET_BATCH": opGetBatch, "OP_CANCEL": opCancel,
		"KIND_HOST": int(KindHost), "KIND_FD": int(KindFD), "KIND_PRODUCER_OWNED": int(KindProducerOwned),
		"ERR_OTHER": errCodeOther, "ERR_BAD_HANDLE": errCodeBadHandle, "ERR_PRODUCER_GONE": errCodeProducerGone,
		"ERR_BAD_REQUEST": errCodeBadRequest, "ERR_CLOSED": errCodeClosed, "ERR_PROTOCOL": errCodeProtocol, "ERR_LIMIT": errCodeLimit,
		"NOTICE_PRODUCER_GONE": noticeProducerGone, "NOTICE_FREED": noticeFreed,
	}
	got := map[string]int{}
	assign := regexp.MustCompile(`(?m)^((?:VERSION|MAX_FILES|FRAME_|OP_|KIND_|ERR_|NOTICE_)[A-Z_]*) = (\d+)\s*(?:#.*)?$`)
	for _, m := range assign.FindAllStringSubmatch(string(src), -1) {
		n, _ := strconv.Atoi(m[2])
		if _, dup := got[m[1]]; dup {
			t.Errorf("%s is assigned twice in %s", m[1], pythonClient)
		}
		got[m[1]] = n
	}
	for name, v := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s does not define %s (= %d)", pythonClient, name, v)
		} else if g != v {
			t.Errorf("%s: %s = %d; want %d, as the Go side", pythonClient, name, g, v)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s defines %s, which this test does not know: add it to the Go side's table", pythonClient, name)
		}
	}
	if m := regexp.MustCompile(`(?m)^HEADER = struct\.Struct\("([^"]+)"\)`).FindStringSubmatch(string(src)); m == nil || m[1] != ">3sBBBBBQI" {
		t.Errorf("%s: HEADER = %q; want the %d-byte layout >3sBBBBBQI", pythonClient, m, headerSize)
	}
}

// pythonRank runs a Python rank with the client, its control channel
// served by b (Serve, as the launcher does); lines carries what it prints.
func pythonRank(t *testing.T, b *Broker, script string) (lines *bufio.Scanner, parent *Conn, served <-chan error, wait func() error) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is needed")
		}
		t.Skip("no python3")
	}
	cmd := exec.Command("python3", "-c", "import sys\nsys.path.insert(0, '../examples/python')\n"+script)
	parent, out := startOnChannel(t, cmd)
	timer := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
	t.Cleanup(func() { timer.Stop() })
	ch := make(chan error, 1)
	go func() { ch <- b.Serve(0, parent, cmd.Process.Pid, nil) }()
	return bufio.NewScanner(out), parent, ch, cmd.Wait
}

// TestPythonClientErrors: the Python client raises what the Go client
// returns: a limit reached (BrokerError "limit reached", after which the
// rank carries on), a protocol violation the broker names in an error
// frame (ChannelClosed, for that call and every later one), and end of
// stream (ChannelClosed).
func TestPythonClientErrors(t *testing.T) {
	t.Run("limit and violation", func(t *testing.T) {
		b := NewBroker(WithLimits(Limits{Handles: 2}))
		defer b.Close()
		lines, _, served, wait := pythonRank(t, b, `
import struct
from mpspawn_ipc import Client, BrokerError, ChannelClosed, HEADER, MAGIC, VERSION, FRAME_REQUEST
c = Client.from_env()
hs = [c.publish(b"a"), c.publish(b"b")]
try:
    c.publish(b"c")
except BrokerError as e:
    print(e.kind, "|", e, flush=True)
c.release(hs[0])
hs[0] = c.publish(b"c")
print("published again", flush=True)
c.sock.sendall(HEADER.pack(MAGIC, VERSION, FRAME_REQUEST, 1, 0, 0, 7, 0))  # flags 1
for _ in range(2):
    try:
        c.get(5)
    except ChannelClosed as e:
        print(e.kind, "|", e, flush=True)
`)
		var got []string
		for lines.Scan() {
			got = append(got, lines.Text())
		}
		if err := wait(); err != nil {
			t.Fatalf("python rank: %v", err)
		}
		want := []string{
			"limit reached | ipc: limit reached: rank 0: holds too many handles to publish more (limit 2; raise it with ipc.WithLimits or MPSPAWN_IPC_MAX_HANDLES)",
			"published again",
			"protocol violation | ipc: protocol violation: ipc: rank 0's control channel: ipc: read frame: bad frame: flags are 0x1, want 0",
			"protocol violation | ipc: protocol violation: ipc: rank 0's control channel: ipc: read frame: bad frame: flags are 0x1, want 0",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("python rank said\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if err := <-served; err == nil || !strings.Contains(err.Error(), "flags are 0x1") {
			t.Errorf("Serve() = %v; want the violation", err)
		}
	})
	t.Run("end of stream", func(t *testing.T) {
		b := NewBroker()
		defer b.Close()
		lines, parent, served, wait := pythonRank(t, b, `
from mpspawn_ipc import Client, ChannelClosed
c = Client.from_env()
c.put(3, b"x")
print("ready", flush=True)
for _ in range(2):
    try:
        c.get(4)
    except ChannelClosed as e:
        print(e.kind, "|", e, flush=True)
`)
		if !lines.Scan() || lines.Text() != "ready" {
			t.Fatalf("python rank said %q; want ready", lines.Text())
		}
		parent.Close() // the launcher ends the channel
		var got []string
		for lines.Scan() {
			got = append(got, lines.Text())
		}
		if err := wait(); err != nil {
			t.Fatalf("python rank: %v", err)
		}
		line := "end of stream | control channel closed by the launcher (end of stream)"
		if len(got) != 2 || got[0] != line || got[1] != line {
			t.Errorf("python rank said %q; want %q twice", got, line)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve() = %v; want nil", err)
		}
	})
}
