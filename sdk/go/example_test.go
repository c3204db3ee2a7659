package culvert_test

import (
	"bytes"
	"context"
	"errors"
	"unicode/utf8"

	culvert "github.com/culvert-dev/culvert/sdk/go"
)

// The function of the package documentation. Run never returns, so this
// example is compiled but not run.
func Example() {
	culvert.Run(func(ctx context.Context, rec *culvert.Record) ([]culvert.Output, error) {
		switch {
		case len(rec.Value) == 0:
			return nil, nil // consumed: no output
		case !utf8.Valid(rec.Value):
			return nil, errors.New("value is not UTF-8") // permanent: dead-lettered
		}
		rec.Value = bytes.ToUpper(rec.Value)
		rec.ContentType = "text/plain"
		if bytes.Contains(rec.Value, []byte("ALERT")) {
			return []culvert.Output{culvert.To("alerts", rec)}, nil // a named route output
		}
		return culvert.Emit(rec), nil // the input record, modified: key and headers kept
	}, culvert.WithAgent("shout/1"))
}
