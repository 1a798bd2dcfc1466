package launcher

import (
	"errors"
	"testing"
)

// TestStreamsError checks that errors.As gives what is wrong with a streams
// value, for a command to word its own message.
func TestStreamsError(t *testing.T) {
	tests := []struct {
		in   string
		want StreamsError
		msg  string
	}{
		{"4", StreamsError{Value: "4", Entry: "4", Want: wantStreams}, `launcher: streams "4": want 0 (none), 1 (stdout), 2 (stderr) or 3 (both)`},
		{" x ", StreamsError{Value: "x", Entry: "x", Want: wantStreams}, `launcher: streams "x": want 0 (none), 1 (stdout), 2 (stderr) or 3 (both)`},
		{"x:1", StreamsError{Value: "x:1", Entry: "x", Want: "a local rank"}, `launcher: streams "x:1": "x": want a local rank`},
		{"0:1,-2:1", StreamsError{Value: "0:1,-2:1", Entry: "-2", Want: "a local rank"}, `launcher: streams "0:1,-2:1": "-2": want a local rank`},
		{"1:9", StreamsError{Value: "1:9", Entry: "9", Want: wantStreams}, `launcher: streams "1:9": "9": want 0 (none), 1 (stdout), 2 (stderr) or 3 (both)`},
		{"0:", StreamsError{Value: "0:", Entry: "", Want: wantStreams}, `launcher: streams "0:": "": want 0 (none), 1 (stdout), 2 (stderr) or 3 (both)`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseStreams(tt.in)
			var se *StreamsError
			if !errors.As(err, &se) || *se != tt.want {
				t.Fatalf("ParseStreams(%q) = %#v; want %#v", tt.in, err, &tt.want)
			}
			if err.Error() != tt.msg {
				t.Errorf("ParseStreams(%q) = %q; want %q", tt.in, err, tt.msg)
			}
		})
	}
}

func TestCheckPrefix(t *testing.T) {
	for _, tc := range []struct {
		template string
		at       int // -1: fine
	}{
		{"", -1}, {DefaultPrefix, -1}, {"${role_name}[${local_rank}] $rank: ", -1}, {"$", -1}, {"${", 0},
		{"[${rank", 1}, {"[${rank}/${rank", 9}, {"x}${rank", 2},
	} {
		err := CheckPrefix(tc.template)
		var pe *PrefixError
		switch {
		case tc.at < 0 && err != nil:
			t.Errorf("CheckPrefix(%q) = %v; want nil", tc.template, err)
		case tc.at >= 0 && (!errors.As(err, &pe) || pe.At != tc.at):
			t.Errorf("CheckPrefix(%q) = %v; want a *PrefixError at %d", tc.template, err, tc.at)
		}
	}
}
