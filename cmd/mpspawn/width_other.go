//go:build !linux

package main

import "io"

// termWidth is 80: terminal sizes are read on Linux only.
func termWidth(io.Writer) int { return 80 }
