package leases

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// File keeps leases in one JSON file, for a single Culvert process: the
// file is rewritten atomically (temporary file + rename) on every change,
// and a mutex orders the changes. Several processes must not share it.
type File struct {
	path string
	mu   sync.Mutex
}

// fileData is the file's content.
type fileData struct {
	Leases map[string]fileLease `json:"leases"`
}

type fileLease struct {
	Lease
	Revision uint64 `json:"revision"`
}

// NewFile returns a store in path, created (with its directory) on the
// first write.
func NewFile(path string) (*File, error) {
	if path == "" {
		return nil, errors.New("lease file: no path")
	}
	f := &File{path: path}
	if _, err := f.load(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) load() (fileData, error) {
	d := fileData{Leases: map[string]fileLease{}}
	b, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return d, fmt.Errorf("lease file: %w", err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("lease file %s: %w", f.path, err)
	}
	if d.Leases == nil {
		d.Leases = map[string]fileLease{}
	}
	return d, nil
}

func (f *File) save(d fileData) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".leases-*")
	if err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("lease file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("lease file: %w", err)
	}
	return nil
}

// List implements Store.
func (f *File) List(ctx context.Context) ([]Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.load()
	if err != nil {
		return nil, err
	}
	out := make([]Lease, 0, len(d.Leases))
	for shard, fl := range d.Leases {
		l := fl.Lease
		l.Shard, l.Revision = shard, fl.Revision
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Shard < out[j].Shard })
	return out, nil
}

// Create implements Store.
func (f *File) Create(ctx context.Context, l Lease) (Lease, error) {
	return f.write(l, true)
}

// Update implements Store.
func (f *File) Update(ctx context.Context, l Lease) (Lease, error) {
	return f.write(l, false)
}

func (f *File) write(l Lease, create bool) (Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.load()
	if err != nil {
		return Lease{}, err
	}
	cur, ok := d.Leases[l.Shard]
	switch {
	case create && ok:
		return Lease{}, fmt.Errorf("shard %s: %w", l.Shard, ErrExists)
	case !create && (!ok || cur.Revision != l.Revision):
		return Lease{}, fmt.Errorf("shard %s at revision %d: %w", l.Shard, l.Revision, ErrConflict)
	}
	l.Revision = cur.Revision + 1
	d.Leases[l.Shard] = fileLease{Lease: l, Revision: l.Revision}
	if err := f.save(d); err != nil {
		return Lease{}, err
	}
	return l, nil
}

// Close implements Store.
func (f *File) Close() error { return nil }
