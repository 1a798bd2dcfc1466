//go:build !linux

package live

import (
	"errors"
	"fmt"
)

// ErrNotFound is a pid or run id that no running launcher publishes.
var ErrNotFound = errors.New("live: no running mpspawn job by that pid or run id on this machine")

// DeniedError is a job whose state this user may not read.
type DeniedError struct {
	Pid, UID int
	Err      error
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("live: job %d is user %d's: its state is not readable by this user: %v", e.Pid, e.UID, e.Err)
}

// Unwrap returns Err.
func (e *DeniedError) Unwrap() error { return e.Err }

var errUnsupported = errors.New("live: a job's live state is published on Linux only")

func stateDir() (string, error)           { return "", errUnsupported }
func writeFile(string, int, []byte) error { return errUnsupported }
func fileName(dir string, pid int) string { return "" }

// Read is not supported here: a job's state is published on Linux only.
func Read(int) (*State, error) { return nil, errUnsupported }

// List is not supported here: a job's state is published on Linux only.
func List() ([]*State, error) { return nil, errUnsupported }
