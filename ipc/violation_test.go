//go:build linux

package ipc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/testrank"
)

// violations are the ways a rank can break the protocol, as violateRank
// commits them: each forges its frame on the rank's control channel.
var violations = map[string]func(fd int) error{
	"flags": func(fd int) error {
		return writeAll(fd, frameHeader{Version: wireVersion, Type: FrameRequest, Flags: 0x80, ID: 1}.encode(), nil)
	},
	"too-many-fds": func(fd int) error {
		return writeAll(fd, frameHeader{Version: wireVersion, Type: FrameRequest, NFiles: MaxFiles, ID: 1}.encode(), repeat(fd, MaxFiles+1))
	},
	"nfds-mismatch": func(fd int) error {
		return writeAll(fd, frameHeader{Version: wireVersion, Type: FrameRequest, NFiles: 2, ID: 1, Length: 1}.encode(), []int{fd})
	},
	"too-long": func(fd int) error {
		return writeAll(fd, frameHeader{Version: wireVersion, Type: FrameRequest, ID: 1, Length: DefaultMaxPayload + 1}.encode(), nil)
	},
	"unfinished": func(fd int) error {
		// A megabyte announced, ten bytes sent: the request that follows
		// is read as more of its payload, and the rest never comes.
		return writeAll(fd, append(frameHeader{Version: wireVersion, Type: FrameRequest, ID: 1, Length: 1 << 20}.encode(), make([]byte, 10)...), nil)
	},
	"unexpected": func(fd int) error {
		return writeAll(fd, frameHeader{Version: wireVersion, Type: FrameResult, ID: 1}.encode(), nil)
	},
	"child": func(int) error {
		// A child the rank passed its descriptor to writes a request.
		cmd := testrank.Command("violate-child")
		cmd.ExtraFiles = []*os.File{os.NewFile(3, "control")}
		cmd.Stderr = os.Stderr
		return cmd.Run()
	},
}

// violateRank is the rank of TestViolationAnswered: it checks that its
// channel works, commits the violation named by args[0], then makes two
// requests and prints what each returned, one line each.
func violateRank(args []string) int {
	violate := violations[args[0]]
	c, err := ClientFromEnv(0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), c), time.Minute)
	defer cancel()
	q := Queue[int]{ID: 5, Capacity: 1}
	if err := q.Put(ctx, 1); err != nil {
		fmt.Fprintln(os.Stderr, "put before the violation:", err)
		return 1
	}
	if err := violate(ControlFD); err != nil {
		fmt.Fprintln(os.Stderr, "violate:", err)
		return 1
	}
	for range 2 {
		_, err := Queue[int]{ID: 6}.Get(ctx)
		fmt.Printf("protocol=%v %v\n", errors.Is(err, ErrProtocol), err)
	}
	return 0
}

// violateChild writes a well-formed request on the control channel it
// inherited from its rank.
func violateChild([]string) int {
	f := os.NewFile(3, "control")
	conn, err := FileConn(f)
	if err == nil {
		err = conn.WriteFrame(Frame{Type: FrameRequest, ID: 99, Payload: appendQueueRef([]byte{opGet}, queueRef{ID: 7})})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "violate-child:", err)
		return 1
	}
	return 0
}

// TestViolationAnswered: every protocol violation a rank commits is
// answered. The real broker's server loop (Serve) sends an error frame
// naming it and closes the channel; the rank's pending call and every
// later one fail with ErrProtocol naming the violation, never hang; Serve
// reports the same violation.
func TestViolationAnswered(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"flags", "flags are 0x80, want 0"},
		{"too-many-fds", "control data truncated"},
		{"nfds-mismatch", "header announces 2 files, 1 received"},
		{"too-long", fmt.Sprintf("payload length %d exceeds limit %d", DefaultMaxPayload+1, DefaultMaxPayload)},
		{"unfinished", "frame left unfinished for 500ms"},
		{"unexpected", "unexpected result frame"},
		{"child", "wrote a frame, but only the rank"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBroker(WithLimits(Limits{FrameTimeout: 500 * time.Millisecond}))
			defer b.Close()
			cmd := testrank.Command("violate", tc.name)
			parent, out := startOnChannel(t, cmd)
			served := make(chan error, 1)
			go func() { served <- b.Serve(0, parent, cmd.Process.Pid, nil) }()
			timer := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
			defer timer.Stop()

			sc := bufio.NewScanner(out)
			var lines []string
			for sc.Scan() {
				lines = append(lines, sc.Text())
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("rank: %v (killed after a minute: a call hung?)", err)
			}
			if len(lines) != 2 {
				t.Fatalf("rank printed %q; want two results", lines)
			}
			for i, l := range lines {
				if !strings.HasPrefix(l, "protocol=true ") || !strings.Contains(l, tc.want) {
					t.Errorf("rank's call %d returned %q; want ErrProtocol naming %q", i+1, l, tc.want)
				}
			}
			err := <-served
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Serve() = %v; want an error naming %q", err, tc.want)
			}
			if pe := (*PeerError)(nil); tc.name == "child" && !errors.As(err, &pe) {
				t.Errorf("Serve() = %v; want a *PeerError", err)
			}
		})
	}
}

// TestFrameTimeoutSpares: a frame whose first bytes came, and the rest
// within the frame timeout, is read; the timeout does not outlive it.
func TestFrameTimeoutSpares(t *testing.T) {
	parent, w := rawPair(t)
	parent.SetFrameTimeout(time.Minute)
	frame := append(frameHeader{Version: wireVersion, Type: FrameArgs, ID: 3, Length: 4}.encode(), "abcd"...)
	sendRaw(t, w, frame[:5])
	got := make(chan error, 1)
	go func() {
		f, err := parent.ReadFrame()
		if err == nil && string(f.Payload) != "abcd" {
			err = fmt.Errorf("payload %q", f.Payload)
		}
		got <- err
	}()
	sendRaw(t, w, frame[5:])
	if err := <-got; err != nil {
		t.Fatalf("ReadFrame() = %v; want the frame", err)
	}
	// Between frames no deadline is left behind: a read past the old
	// frame's deadline still waits (bounded here by the caller's own).
	if err := parent.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := parent.ReadFrame(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFrame() with nothing sent = %v; want the caller's deadline", err)
	}
}
