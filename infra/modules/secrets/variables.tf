variable "name" {
  description = "Name prefix of the secrets (secrets are named <name>/<secret>)."
  type        = string
}

variable "database_url" {
  description = "PostgreSQL connection URL for CHATTY__DATABASE__URL (from the rds module)."
  type        = string
  sensitive   = true
}

variable "migration_database_url" {
  description = "PostgreSQL URL of the schema owner for CHATTY__DATABASE__MIGRATION_URL (from the rds module); the migration task only."
  type        = string
  sensitive   = true
}

variable "redis_url" {
  description = "Redis connection URL for CHATTY__REDIS__URL (from the redis module); non-empty means cluster mode."
  type        = string
  sensitive   = true
}

variable "kms_key_arn" {
  description = "KMS key encrypting the secrets. null uses the AWS-managed Secrets Manager key."
  type        = string
  default     = null
}

variable "recovery_window_days" {
  description = "Recovery window of the secrets on deletion (0 deletes immediately)."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
