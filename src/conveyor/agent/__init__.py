"""conveyor's agent: a DogStatsD server that receives packets from application
processes, aggregates them per flush interval and exports them to backends."""
