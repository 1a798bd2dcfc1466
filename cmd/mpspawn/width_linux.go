package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// termWidth is the width of the terminal w writes to, or 80 when w is not
// a terminal.
func termWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	return 80
}
