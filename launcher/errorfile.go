package launcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
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

// ReadErrorFile reads and parses a torchelastic error file. A missing file
// (or an empty path) gives nil and no error.
func ReadErrorFile(path string) (*ErrorFile, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("launcher: read error file: %w", err)
	}
	return ParseErrorFile(data)
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
