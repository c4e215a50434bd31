"""The DataService cutover example: ``app`` (the service), ``stub`` (DataService), ``load``
(a bounded load generator), ``seed`` (the data both sides serve). See README.md."""
