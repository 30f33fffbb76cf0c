variable "name" {
  description = "Replication group ID and name prefix (lowercase letters, digits and hyphens, at most 40 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.name))
    error_message = "name must start with a letter and hold at most 40 lowercase letters, digits or hyphens."
  }
}

variable "subnet_ids" {
  description = "Private subnets for the cache subnet group."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the replication group (from the security module)."
  type        = string
}

variable "engine_version" {
  description = "Redis engine version (7.x: the presence Lua script needs Redis 7)."
  type        = string
  default     = "7.1"
}

variable "node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "num_cache_clusters" {
  description = "Number of nodes (1 primary + replicas). 2 or more enables automatic failover and Multi-AZ."
  type        = number
  default     = 2

  validation {
    condition     = var.num_cache_clusters >= 1 && var.num_cache_clusters <= 6
    error_message = "num_cache_clusters must be between 1 and 6."
  }
}

variable "snapshot_retention_days" {
  description = "Days of daily snapshots. Redis only carries the cluster bus and presence (Postgres is the source of truth), so 0 (none) is fine."
  type        = number
  default     = 0
}

variable "maintenance_window" {
  description = "Weekly UTC maintenance window (ddd:hh24:mi-ddd:hh24:mi)."
  type        = string
  default     = "sun:05:00-sun:06:00"
}

variable "kms_key_arn" {
  description = "KMS key for at-rest encryption and the auth token secret. null uses AWS-managed keys (encryption stays on)."
  type        = string
  default     = null
}

variable "apply_immediately" {
  description = "Apply modifications immediately instead of in the next maintenance window."
  type        = bool
  default     = false
}

variable "secret_recovery_window_days" {
  description = "Recovery window of the Secrets Manager secret holding the auth token (0 deletes immediately)."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
