# Kafka tests: Debian's kcat (librdkafka) is the independent client that
# produces the input of a pipeline and reads its output back
# (internal/runner TestKafkaKcat). The brokers themselves are franz-go's
# kfake, started in-process by the tests on 127.0.0.1.
apt_install kcat
