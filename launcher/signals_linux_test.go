package launcher

import (
	"errors"
	"syscall"
	"testing"
)

// TestKillGroup checks that only a group that is gone is not an error: any
// other failure comes back, and pids that kill(2) would read as "my own
// group" or "every process" are refused.
func TestKillGroup(t *testing.T) {
	own := syscall.Getpgrp()
	tests := []struct {
		name    string
		pid     int
		sig     syscall.Signal
		wantErr error // nil: no error
		refused bool  // an error without an errno: nothing was sent
	}{
		{name: "group gone", pid: 1 << 22, sig: syscall.SIGKILL}, // above any pid_max
		{name: "own group, signal 0", pid: own, sig: 0},
		{name: "not a signal", pid: own, sig: syscall.Signal(1000), wantErr: syscall.EINVAL},
		{name: "pid 0", pid: 0, sig: 0, refused: true},
		{name: "pid 1", pid: 1, sig: 0, refused: true},
		{name: "negative pid", pid: -own, sig: 0, refused: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.pid == own && own < 2 {
				t.Skipf("this test runs in process group %d", own)
			}
			err := killGroup(tt.pid, tt.sig)
			switch {
			case tt.refused:
				var errno syscall.Errno
				if err == nil || errors.As(err, &errno) {
					t.Errorf("killGroup(%d, %d) = %v; want a refusal, no errno", tt.pid, tt.sig, err)
				}
			case tt.wantErr == nil && err != nil, tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("killGroup(%d, %d) = %v; want %v", tt.pid, tt.sig, err, tt.wantErr)
			}
		})
	}
}
