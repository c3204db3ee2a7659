//go:build !linux

package network

import (
	"context"

	"github.com/culvert-dev/culvert/sandbox"
)

// Manager prepares network namespaces. Elsewhere than on Linux it cannot be
// created.
type Manager struct{}

// NewManager returns ErrNotSupported on this OS.
func NewManager(Config) (*Manager, error) { return nil, ErrNotSupported }

// Prepare returns ErrNotSupported on this OS.
func (*Manager) Prepare(context.Context, string, string, sandbox.Network) (*Attachment, error) {
	return nil, ErrNotSupported
}

// Close does nothing on this OS.
func (*Manager) Close() error { return nil }
