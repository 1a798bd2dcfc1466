//go:build linux

package launcher

import (
	"testing"
)

func TestParseStreams(t *testing.T) {
	tests := []struct {
		in      string
		rank    int
		want    Streams
		wantErr bool
	}{
		{"3", 7, StreamBoth, false},
		{"0:1,12:2", 12, StreamStderr, false},
		{"0:1,12:2", 5, StreamNone, false},
		{"4", 0, 0, true},
		{"x:1", 0, 0, true},
		{"1:9", 0, 0, true},
	}
	for _, tt := range tests {
		m, err := ParseStreams(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseStreams(%q) error = %v; want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if got := m.For(tt.rank); err == nil && got != tt.want {
			t.Errorf("ParseStreams(%q).For(%d) = %d; want %d", tt.in, tt.rank, got, tt.want)
		}
	}
}

func TestParseErrorFile(t *testing.T) {
	tests := []struct {
		name, in, msg, tb string
	}{
		{"torch", `{"message": {"message": "RuntimeError: x", "extraInfo": {"py_callstack": "Traceback\n", "timestamp": "1700000000"}}}`, "RuntimeError: x", "Traceback\n"},
		{"string", `{"message": "plain"}`, "plain", ""},
	}
	for _, tt := range tests {
		ef, err := ParseErrorFile([]byte(tt.in))
		if err != nil || ef.Message != tt.msg || ef.Traceback != tt.tb {
			t.Errorf("%s: ParseErrorFile = %+v, %v; want %q, %q", tt.name, ef, err, tt.msg, tt.tb)
		}
	}
	if _, err := ParseErrorFile([]byte("{")); err == nil {
		t.Error("ParseErrorFile(\"{\") succeeded; want an error")
	}
}
