package kinesis

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// ClientConfig says how to reach Kinesis.
type ClientConfig struct {
	// Endpoint overrides the service URL (an emulator, a VPC endpoint).
	Endpoint string
	// Region; empty takes the SDK's default (AWS_REGION, the profile).
	Region string
	// AccessKeyID and SecretAccessKey (with SessionToken, optional) give
	// static credentials; empty uses the SDK's default chain
	// (environment, shared files, SSO, IMDS...).
	AccessKeyID, SecretAccessKey, SessionToken string
	// Profile selects a shared-config profile for the default chain.
	Profile string
}

// NewClient returns a Kinesis client for c. SDK-level retries are kept at
// the SDK default for requests; the source and sink add their own backoff
// on top for throttling and connection loss.
func NewClient(ctx context.Context, c ClientConfig) (*kinesis.Client, error) {
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		return nil, errors.New("kinesis: access_key_id and secret_access_key go together")
	}
	var opts []func(*config.LoadOptions) error
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	if c.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(c.Profile))
	}
	if c.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken)))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("kinesis: loading AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("kinesis: no region (set region, or AWS_REGION)")
	}
	return kinesis.NewFromConfig(cfg, func(o *kinesis.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	}), nil
}
