variable "name" {
  description = "Name prefix for the security groups."
  type        = string
}

variable "vpc_id" {
  description = "ID of the VPC the security groups belong to."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of the VPC: the only source allowed to reach the tasks' metrics port (Prometheus inside the VPC)."
  type        = string
}

variable "alb_ingress_cidrs" {
  description = "IPv4 CIDRs allowed to reach the public load balancer on ports 80 and 443."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "app_port" {
  description = "Public port of the chatty container (server.port): WebSocket, HTTP API, health endpoints."
  type        = number
  default     = 8080
}

variable "metrics_port" {
  description = "Metrics port of the chatty container (server.metrics_port), reachable only from inside the VPC."
  type        = number
  default     = 9090
}

variable "db_port" {
  description = "PostgreSQL port."
  type        = number
  default     = 5432
}

variable "redis_port" {
  description = "Redis port."
  type        = number
  default     = 6379
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
