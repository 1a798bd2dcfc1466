//go:build !linux

package launcher

import "os"

func openErrorFile(path string) (*os.File, error) { return os.Open(path) }
