# Adds the region of the order's country and the order total.
. + {
  region: ({"FR": "eu", "DE": "eu", "ES": "eu", "US": "na", "CA": "na", "JP": "apac", "BR": "latam"}[.country] // "unknown"),
  total: ((.items // []) | map(.qty * .price) | add // 0)
}
