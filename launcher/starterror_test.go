package launcher

import (
	"errors"
	"fmt"
	"os"
	"testing"
)

// TestStartError checks that a start failure names the rank and says
// "launcher: " once, also when the forkserver died.
func TestStartError(t *testing.T) {
	died := fmt.Errorf("%w (pid 42, signal: killed); every rank it started was killed", ErrForkserverDied)
	tests := []struct {
		name string
		err  error
		want string
		is   error
	}{
		{"exec", &os.PathError{Op: "fork/exec", Path: "/x", Err: os.ErrPermission}, "launcher: start rank 3: fork/exec /x: permission denied", os.ErrPermission},
		{"forkserver died", died, "launcher: forkserver died (pid 42, signal: killed); every rank it started was killed", ErrForkserverDied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := startError(3, tt.err)
			if err.Error() != tt.want || !errors.Is(err, tt.is) {
				t.Errorf("startError(3, %q) = %q; want %q, wrapping %v", tt.err, err, tt.want, tt.is)
			}
			var se *StartError
			if typed := errors.As(err, &se); typed != !errors.Is(tt.err, ErrForkserverDied) || typed && (se.Rank != 3 || se.Err != tt.err) {
				t.Errorf("startError(3, %q) as *StartError = %v, %+v; want one for rank 3 unless the forkserver died", tt.err, typed, se)
			}
		})
	}
}
