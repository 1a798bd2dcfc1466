package job

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/internal/safefs"
	"github.com/mpspawn/mpspawn/launcher"
)

// WriteRootCause writes the root cause's error to path in torch's
// error-file format, as torchrun does with the launcher's own
// TORCHELASTIC_ERROR_FILE: the rank's error file (its message, traceback
// and time) with "errorCode" set to the rank's exit code. A rank that wrote
// no error file is described by its last stderr lines (its message is the
// last of them) or, without any, by its exit. The file is written by
// package safefs's rules: never through a link another user planted.
func WriteRootCause(path string, r *launcher.RankResult) error {
	type extraInfo struct {
		PyCallstack string `json:"py_callstack"`
		Timestamp   string `json:"timestamp"`
	}
	var msg struct {
		Message   string    `json:"message"`
		ExtraInfo extraInfo `json:"extraInfo"`
		ErrorCode int       `json:"errorCode"`
	}
	msg.ErrorCode = r.ExitCode
	if r.Signal != 0 {
		msg.ErrorCode = -int(r.Signal) // torch's exitcode for a signalled process
	}
	when := r.Ended
	switch excerpt := stderrExcerpt(r.Stderr); {
	case r.ErrorFile != nil:
		msg.Message, msg.ExtraInfo.PyCallstack = r.ErrorFile.Message, r.ErrorFile.Traceback
		if !r.ErrorFile.Time.IsZero() {
			when = r.ErrorFile.Time
		}
	case len(excerpt) > 0:
		msg.Message, msg.ExtraInfo.PyCallstack = excerpt[len(excerpt)-1], strings.Join(excerpt, "\n")+"\n"
	default:
		msg.Message = fmt.Sprintf("rank %d (local_rank %d) failed: %s", r.Rank, r.LocalRank, r.Status())
	}
	if when.IsZero() {
		when = time.Now()
	}
	msg.ExtraInfo.Timestamp = strconv.FormatInt(when.Unix(), 10)
	data, err := json.Marshal(map[string]any{"message": msg})
	if err != nil {
		return fmt.Errorf("job: root cause error file: %w", err)
	}
	write := func(w io.Writer) error { _, err := w.Write(append(data, '\n')); return err }
	if err := safefs.WriteFile(path, 0o644, write); err != nil {
		return fmt.Errorf("job: root cause error file: %w", err)
	}
	return nil
}
