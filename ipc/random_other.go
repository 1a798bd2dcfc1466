//go:build !linux

package ipc

import "crypto/rand"

// randomBytes fills b with cryptographically random bytes.
func randomBytes(b []byte) error {
	_, err := rand.Read(b)
	return err
}
