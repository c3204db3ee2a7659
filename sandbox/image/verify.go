package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// verifiedImage hands out layers whose uncompressed content is hashed as it
// is read and compared with the diff IDs of the config the image ID names.
// A layer's stream is checked when it is drained or closed; errs collects
// every mismatch.
type verifiedImage struct {
	v1.Image
	layers []v1.Layer
	errs   *layerErrors
}

type layerErrors struct {
	mu   sync.Mutex
	errs []error
}

func (e *layerErrors) add(err error) {
	e.mu.Lock()
	e.errs = append(e.errs, err)
	e.mu.Unlock()
}

func (e *layerErrors) first() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.errs) == 0 {
		return nil
	}
	return e.errs[0]
}

func verified(img v1.Image, cfg *v1.ConfigFile) (*verifiedImage, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("listing the image's layers: %w", err)
	}
	ids := cfg.RootFS.DiffIDs
	if len(ids) != len(layers) {
		return nil, fmt.Errorf("the image config names %d layers but the manifest has %d", len(ids), len(layers))
	}
	v := &verifiedImage{Image: img, errs: &layerErrors{}}
	for i, l := range layers {
		if ids[i].Algorithm != "sha256" {
			return nil, fmt.Errorf("layer %d: diff ID %s: only sha256 is supported", i, ids[i])
		}
		v.layers = append(v.layers, &verifiedLayer{Layer: l, index: i, want: ids[i], errs: v.errs})
	}
	return v, nil
}

func (v *verifiedImage) Layers() ([]v1.Layer, error) { return v.layers, nil }

type verifiedLayer struct {
	v1.Layer
	index int
	want  v1.Hash
	errs  *layerErrors
}

func (l *verifiedLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("layer %d (%s): %w", l.index, l.want, err)
	}
	return &hashingReader{rc: rc, h: sha256.New(), layer: l}, nil
}

type hashingReader struct {
	rc    io.ReadCloser
	h     hash.Hash
	layer *verifiedLayer
	done  bool
	err   error
}

func (r *hashingReader) Read(p []byte) (int, error) {
	if r.done {
		return 0, r.endErr()
	}
	n, err := r.rc.Read(p)
	r.h.Write(p[:n])
	if err == io.EOF {
		r.finish()
		return n, r.endErr()
	}
	return n, err
}

func (r *hashingReader) endErr() error {
	if r.err != nil {
		return r.err
	}
	return io.EOF
}

func (r *hashingReader) finish() {
	r.done = true
	got := "sha256:" + hex.EncodeToString(r.h.Sum(nil))
	if got != r.layer.want.String() {
		r.err = fmt.Errorf("layer %d: content digest %s does not match the diff ID %s in the image config", r.layer.index, got, r.layer.want)
		r.layer.errs.add(r.err)
	}
}

// Close drains what the tar reader left (padding, trailer) so that the
// whole stream is hashed, then closes.
func (r *hashingReader) Close() error {
	if !r.done {
		if _, err := io.Copy(io.Discard, readerFunc(r.Read)); err != nil && r.err == nil {
			r.layer.errs.add(fmt.Errorf("layer %d: %w", r.layer.index, err))
		}
	}
	return r.rc.Close()
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
