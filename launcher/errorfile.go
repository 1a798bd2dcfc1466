package launcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"time"
)

// ErrorFile is what a rank reported in its torchelastic error file, the
// JSON that torch's @record decorator writes to TORCHELASTIC_ERROR_FILE:
//
//	{"message": {"message": "RuntimeError: ...",
//	             "extraInfo": {"py_callstack": "Traceback ...", "timestamp": "1700000000"}}}
//
// A plain string "message" is accepted too.
type ErrorFile struct {
	Message   string    `json:"message"`
	Traceback string    `json:"traceback,omitempty"`
	Time      time.Time `json:"time,omitzero"`
}

// Bounds on what is read of a rank's error file: the rank controls it, and
// a FIFO, a symlink to /dev/zero or a file of gigabytes must neither hang
// nor exhaust the launcher.
const (
	maxErrorFile = 1 << 20  // bytes read
	maxMessage   = 4 << 10  // bytes of the message kept
	maxTraceback = 64 << 10 // bytes of the traceback kept (its end)
)

// ReadErrorFile reads and parses a torchelastic error file. A missing file
// (or an empty path) gives nil and no error. Only a regular file, not a
// symbolic link, of at most 1 MiB is read, without blocking; the message and
// traceback are truncated to a few KiB.
func ReadErrorFile(path string) (*ErrorFile, error) {
	if path == "" {
		return nil, nil
	}
	f, err := openErrorFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("launcher: read error file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		return nil, fmt.Errorf("launcher: read error file: %w", err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("launcher: read error file %s: not a regular file (%v)", path, st.Mode().Type())
	case st.Size() > maxErrorFile:
		return nil, fmt.Errorf("launcher: read error file %s: %d bytes, more than the %d read", path, st.Size(), maxErrorFile)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxErrorFile))
	if err != nil {
		return nil, fmt.Errorf("launcher: read error file: %w", err)
	}
	ef, err := ParseErrorFile(data)
	if ef != nil {
		ef.Message = truncate(ef.Message, maxMessage, false)
		ef.Traceback = truncate(ef.Traceback, maxTraceback, true)
	}
	return ef, err
}

// truncate cuts s to at most n bytes, keeping its end when tail is set,
// and says so.
func truncate(s string, n int, tail bool) string {
	if len(s) <= n {
		return s
	}
	if tail {
		return "... (truncated)\n" + strings.ToValidUTF8(s[len(s)-n:], "")
	}
	return strings.ToValidUTF8(s[:n], "") + "... (truncated)"
}

// ParseErrorFile parses the contents of a torchelastic error file.
func ParseErrorFile(data []byte) (*ErrorFile, error) {
	var top struct {
		Message json.RawMessage `json:"message"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("launcher: parse error file: %w", err)
	}
	var text string
	if json.Unmarshal(top.Message, &text) == nil {
		return &ErrorFile{Message: text}, nil
	}
	var msg struct {
		Message   string `json:"message"`
		ExtraInfo struct {
			PyCallstack string          `json:"py_callstack"`
			Timestamp   json.RawMessage `json:"timestamp"`
		} `json:"extraInfo"`
	}
	if err := json.Unmarshal(top.Message, &msg); err != nil {
		return nil, fmt.Errorf("launcher: parse error file: %w", err)
	}
	ef := &ErrorFile{Message: msg.Message, Traceback: msg.ExtraInfo.PyCallstack}
	ef.Time = parseTimestamp(msg.ExtraInfo.Timestamp)
	return ef, nil
}

// parseTimestamp accepts torch's Unix seconds as a string or a number.
func parseTimestamp(raw json.RawMessage) time.Time {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		s = string(raw)
	}
	if sec, err := strconv.ParseInt(s, 10, 64); err == nil && sec > 0 {
		return time.Unix(sec, 0)
	}
	return time.Time{}
}
